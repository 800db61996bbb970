// Shared by both gateways.
