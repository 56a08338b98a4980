"""The PEFT LoRA adapter format and a bounded safetensors header parser.

Standard library only: the engine (which loads adapters into GPU slots) and the registry
(which validates uploads) both use them, and the GPU machine has neither web nor database
packages.
"""
