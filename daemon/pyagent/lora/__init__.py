"""LoRA delta exchange (issue 14): the delta codecs (``codecs``), the flat delta layout (``layout``) and
in-process merges (``merge``), which need numpy only; the torch adapters (``adapter``) and the fine-tuning
harness (``finetune``), which need the extra ``pyagent[torch]``. docs/lora.md describes them."""
