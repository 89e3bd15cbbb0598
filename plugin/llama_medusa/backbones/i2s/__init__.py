"""BitNet b1.58 in bitnet.cpp's I2_S format: the file reader and writer (gguf_file.py), the packing (packing.py),
the native engine (engine.py), the backbone over it (backbone.py) and the converters to upstream types (convert.py).
"""
