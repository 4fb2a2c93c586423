"""PyAgent built-in plugin: LoRA delta averaging across the mesh (docs/lora.md)."""
