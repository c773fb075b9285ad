"""Export: ONNX (fp32, int8) with graph passes for the bottleneck family, parity checks, latency reports."""
