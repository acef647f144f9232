// Multistream module
