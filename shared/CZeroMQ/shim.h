#ifndef WIPAY_CZEROMQ_SHIM_H
#define WIPAY_CZEROMQ_SHIM_H
#include <zmq.h>
#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#endif
