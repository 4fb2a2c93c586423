"""The core daemon and the CLI never import torch: only the LoRA adapter modules do."""

from __future__ import annotations

import subprocess
import sys

NO_TORCH = [
    "pyagent.cli",
    "pyagent.node.daemon",
    "pyagent.lora.codecs",
    "pyagent.lora.layout",
    "pyagent.lora.merge",
]


def torch_loaded_after_importing(*modules: str) -> bool:
    code = "import importlib, sys\n"
    code += "".join(f"importlib.import_module({module!r})\n" for module in modules)
    code += "print('torch' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.strip() == "True"


def test_daemon_cli_and_codecs_do_not_import_torch() -> None:
    assert not torch_loaded_after_importing(*NO_TORCH)


def test_the_check_sees_torch_when_it_is_imported() -> None:
    assert torch_loaded_after_importing("pyagent.lora.adapter")
