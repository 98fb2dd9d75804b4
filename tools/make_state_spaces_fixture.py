"""Writes a state-spaces (mamba_ssm) layout copy of an HF Mamba2 fixture: pytorch_model.bin + mamba_ssm config.

Usage: python tools/make_state_spaces_fixture.py HF_FIXTURE_DIR OUT_DIR
Needs torch and safetensors (the reference venv of ../shared/tools/setup_venv_ref.sh).
The weights are the HF fixture's, renamed as mamba_ssm names them (backbone.embedding.weight); the config
is mamba_ssm's MambaConfig with an ssm_cfg for Mamba2. Coil must load it and produce the HF fixture's logits.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
hf = json.load(open(os.path.join(src, "config.json")))
sd = load_file(os.path.join(src, "model.safetensors"))
sd = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in sd.items()}
torch.save(sd, os.path.join(out, "pytorch_model.bin"))
lo, hi = hf.get("time_step_limit", [0.0, float("inf")])
cfg = {
    "d_model": hf["hidden_size"],
    "d_intermediate": 0,
    "n_layer": hf["num_hidden_layers"],
    "vocab_size": hf["vocab_size"],
    "ssm_cfg": {
        "layer": "Mamba2",
        "d_state": hf["state_size"],
        "d_conv": hf["conv_kernel"],
        "expand": hf["expand"],
        "headdim": hf["head_dim"],
        "ngroups": hf["n_groups"],
        "chunk_size": hf["chunk_size"],
    },
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 8,
    "tie_embeddings": hf["tie_word_embeddings"],
}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
print("wrote", out)
