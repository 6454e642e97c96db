"""Fast inference engines behind one tier interface: ``fast_gpu`` (torch, CUDA graphs, nvJPEG) and
``onnx_cpu`` (onnxruntime, int8). May import models.base, imaging and core."""
