"""LoRA delta exchange (issue 14). So far its first part: the delta codecs (docs/lora.md, "Codecs")."""
