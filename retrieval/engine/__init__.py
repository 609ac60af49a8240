"""The engine at run time, torch-free: images decoded safely, embedded (ONNX Runtime or any batch
function), and a query answered by a k-NN vote over its neighbours."""
