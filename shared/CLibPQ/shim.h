#ifndef WIPAY_CLIBPQ_SHIM_H
#define WIPAY_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#include <sys/eventfd.h>
#endif
