"""The `llama-medusa` commands (cli.py dispatches): bench, train, serve, requantize, convert-i2s, bitnet-bench,
gpu-bench."""
