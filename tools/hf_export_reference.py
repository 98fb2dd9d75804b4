#!/usr/bin/env python3
"""Reference outputs for Coil's exact-export test (crates/train/tests/hf_export.rs).

Each directory given (default: every case under crates/train/tests/fixtures/hf_export/) holds a checkpoint that
Coil trained and wrote itself: config.json, model.safetensors, tokenizer.json, tokenizer_config.json. This script
loads it the way a user would, with transformers' AutoModelForCausalLM and AutoTokenizer (float32, CPU), and
writes into the same directory:

  reference.safetensors   input_ids i64 [1, T] (bytes of a Shakespeare passage, T longer than the chunk size)
                          logits    f32 [1, T, V] (transformers' forward without a cache: the chunked path)
  reference.json          versions, the config transformers ended up with (its dt clamp included), and what
                          AutoTokenizer made of a sample text (ids and the decoded text)

Run once with the reference venv (bash ../shared/tools/setup_venv_ref.sh builds it):
  $REF_VENV/bin/python tools/hf_export_reference.py
Re-runs give identical files.
"""

import json
import pathlib
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASES = ROOT / "crates/train/tests/fixtures/hf_export"
CORPUS = ROOT / "crates/data/corpus/hamlet.txt"
SEQ_LEN = 40
OFFSET = 5000
SAMPLE_TEXT = "ROMEO: ó\n"


def reference(case: pathlib.Path) -> dict:
    config = AutoConfig.from_pretrained(case)
    model = AutoModelForCausalLM.from_pretrained(case, dtype=torch.float32)
    model.eval()
    chunk = config.chunk_size
    assert SEQ_LEN > chunk, f"{case}: the input must be longer than the chunk size {chunk}"
    data = CORPUS.read_bytes()[OFFSET : OFFSET + SEQ_LEN]
    ids = torch.tensor([list(data)], dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.float()
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous()},
        str(case / "reference.safetensors"),
        metadata={"format": "pt"},
    )
    tok = AutoTokenizer.from_pretrained(case)
    sample_ids = tok.encode(SAMPLE_TEXT, add_special_tokens=False)
    mixer = next(m for m in model.modules() if hasattr(m, "dt_bias"))
    limit = getattr(mixer, "time_step_limit", None)
    return {
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "model_type": config.model_type,
        "chunk_size": chunk,
        "seq_len": SEQ_LEN,
        "input": f"{CORPUS.relative_to(ROOT)} bytes {OFFSET}..{OFFSET + SEQ_LEN}",
        # as text, since JSON has no infinity
        "mixer_time_step_limit": [repr(float(x)) for x in limit] if limit is not None else None,
        "tokenizer": {
            "class": type(tok).__name__,
            "text": SAMPLE_TEXT,
            "ids": sample_ids,
            "decoded": tok.decode(sample_ids),
            "eos_token_id": tok.eos_token_id,
        },
    }


def main() -> None:
    cases = [pathlib.Path(p) for p in sys.argv[1:]] or sorted(p for p in CASES.iterdir() if p.is_dir())
    for case in cases:
        info = reference(case)
        text = json.dumps(info, indent=2, ensure_ascii=False, allow_nan=False)
        (case / "reference.json").write_text(text + "\n")
        print(f"{case.name}: clamp {info['mixer_time_step_limit']}, tokenizer {info['tokenizer']['class']}")


if __name__ == "__main__":
    main()
