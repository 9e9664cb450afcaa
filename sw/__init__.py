"""systolic.sw: training, quantization, golden model, compiler and host driver."""
