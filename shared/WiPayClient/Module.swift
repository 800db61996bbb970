// Shared by the reference clients.
