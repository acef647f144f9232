// Noise module
