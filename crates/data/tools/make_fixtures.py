#!/usr/bin/env python3
"""Generate coil-data's interop fixtures with the reference implementations.

Run from anywhere with the reference venv (torch + numpy) and an unpacked megatron-core wheel:

    pip download --no-deps megatron-core && python -m zipfile -e megatron_core-*.whl /tmp/mcore
    pip install sentencepiece tiktoken tokenizers
    MCORE=/tmp/mcore python crates/data/tools/make_fixtures.py

Everything is written under crates/data/tests/fixtures/. Nothing here runs at test time: the Rust tests
only read the generated files. The oracles are
- megatron-core `datasets/indexed_dataset.py` (the .bin/.idx writer and reader),
- megatron-core `GPTDataset` + `BlendedMegatronDatasetBuilder` (document/sample/shuffle indices, blends),
- HF `tokenizers`, OpenAI `tiktoken` (with NeMo's Nemotron-H split pattern), Google `sentencepiece`.
"""

import base64
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
CRATE = HERE.parent
OUT = CRATE / "tests" / "fixtures"
CORPUS = CRATE / "corpus"
sys.path.insert(0, os.environ.get("MCORE", "/tmp/mcore/x"))

SAMPLE_TEXTS = [
    "Hello world",
    "To be, or not to be: that is the question.",
    "  leading spaces and trailing   ",
    "Numbers 12345 and 3.14159!",
    "Unicode: caf\u00e9, na\u00efve, \u65e5\u672c\u8a9e, emoji \U0001f600.",
    "Line one\nLine two\r\n\n\ttabbed",
    "ALLCAPS CamelCase lowerUPPER it's we'll they're",
    "",
]


def dump(name, obj):
    with open(OUT / name, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def indexed_fixtures():
    """One tiny dataset per dtype, written by megatron's builder; the tokens go to a JSON sidecar."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder, IndexedDataset

    rng = numpy.random.default_rng(7)
    cases = {}
    for code in range(1, 9):
        dtype = DType.dtype_from_code(code)
        name = f"mcore_{DType(code).name}"
        prefix = str(OUT / name)
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
        hi = {1: 250, 2: 120, 3: 30000, 4: 200000, 5: 2**40, 6: 1000, 7: 1000, 8: 65000}[code]
        docs = []
        # Documents 0 and 2 have one sequence each; document 1 has three (add_document with lengths).
        for d in range(3):
            nseq = 3 if d == 1 else 1
            seqs = [rng.integers(0, hi, size=int(rng.integers(1, 9))) for _ in range(nseq)]
            seqs = [s.astype(dtype) if code not in (6, 7) else (s.astype(dtype) + 0.5) for s in seqs]
            if nseq == 1:
                builder.add_item(__import__("torch").from_numpy(seqs[0].copy()))
                builder.end_document()
            else:
                flat = numpy.concatenate(seqs)
                builder.add_document(flat, [len(s) for s in seqs])
            docs.append([s.tolist() for s in seqs])
        builder.finalize(prefix + ".idx")
        ds = IndexedDataset(prefix)
        cases[name] = {
            "dtype_code": code,
            "documents": docs,
            "sequence_lengths": ds.sequence_lengths.tolist(),
            "sequence_pointers": ds.index.sequence_pointers.tolist(),
            "document_indices": ds.document_indices.tolist(),
        }
    dump("mcore_indexed.json", cases)

    # Coil -> megatron direction: the test writes coil_written.{bin,idx}; this reader is the check.
    # (Kept as a function so a developer can run it by hand after `cargo test`.)


def gpt_fixtures():
    """GPTDataset indices and samples for one dataset and for a 30/70 blend, built by megatron-core."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    import torch

    torch.distributed.get_rank = lambda *a, **k: 0  # BlendedDataset asks for a rank even without a group
    rng = numpy.random.default_rng(11)
    for name, ndocs in (("gpt_a", 40), ("gpt_b", 25)):
        prefix = str(OUT / name)
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
        for _ in range(ndocs):
            n = int(rng.integers(1, 40))
            toks = rng.integers(3, 1000, size=n).astype(numpy.uint16)
            toks[-1] = 2  # eod
            builder.add_item(torch.from_numpy(toks))
            builder.end_document()
        builder.finalize(prefix + ".idx")

    class Tok:
        eod = 2
        pad = 0
        vocab_size = 1000
        unique_identifiers = {"class": "Tok"}

    cases = []
    configs = [
        ("single", [str(OUT / "gpt_a")], None, "900,50,50", [60, 12, 5], 16, 1234),
        ("single_multi_epoch", [str(OUT / "gpt_a")], None, "80,20,0", [200, 40, 0], 8, 42),
        ("blend", [str(OUT / "gpt_a"), str(OUT / "gpt_b")], [30.0, 70.0], "900,50,50", [50, 10, 4], 16, 1234),
        ("blend_unweighted", [str(OUT / "gpt_a"), str(OUT / "gpt_b"), str(OUT / "gpt_a")], None, "900,50,50",
         [30, 6, 3], 16, 5),
        ("valid_partial_eod_mask", [str(OUT / "gpt_b")], None, "70,30,0", [10, 3, 0], 16, 3,
         {"drop_last_partial_validation_sequence": False, "eod_mask_loss": True}),
        ("blend_unweighted_all", [str(OUT / "gpt_a"), str(OUT / "gpt_b"), str(OUT / "gpt_a")], None, "900,50,50",
         [None, None, None], 16, 5),
    ]
    a, b = str(OUT / "gpt_a"), str(OUT / "gpt_b")
    configs.append(("per_split", None, None, None, [40, 6, 5], 16, 77,
                    {"blend_per_split": [[[a, b], [30.0, 70.0]], [[b], None], [[a, b], None]]}))
    for label, prefixes, weights, split, sizes, seq, seed, *extra in configs:
        extra = extra[0] if extra else {}
        cache = tempfile.mkdtemp()
        per_split = extra.get("blend_per_split")
        cfg = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq,
            blend=(prefixes, weights) if per_split is None else None,
            blend_per_split=[tuple(x) for x in per_split] if per_split else None,
            split=split,
            tokenizer=Tok(),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=extra.get("eod_mask_loss", False),
            drop_last_partial_validation_sequence=extra.get("drop_last_partial_validation_sequence", True),
            path_to_cache=cache,
            mmap_bin_files=True,
        )
        train, valid, test = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, cfg).build()
        if per_split:
            extra = {"blend_per_split": [[[Path(p).name for p in ps], w] for ps, w in per_split]}
            prefixes = []
        case = {"label": label, "prefixes": [Path(p).name for p in prefixes], "weights": weights,
                "split": split, "sizes": sizes, "seq_length": seq, "seed": seed, "splits": {}, **extra}
        for sname, ds in (("train", train), ("valid", valid), ("test", test)):
            if ds is None:
                case["splits"][sname] = None
                continue
            entry = {"len": len(ds)}
            if not hasattr(ds, "dataset_index"):
                entry["indices_range"] = [int(ds.indices[0]), int(ds.indices[-1]) + 1]
                entry["document_index"] = numpy.asarray(ds.document_index).tolist()
                entry["sample_index"] = numpy.asarray(ds.sample_index).tolist()
                entry["shuffle_index"] = numpy.asarray(ds.shuffle_index).tolist()
            else:
                entry["dataset_index"] = numpy.asarray(ds.dataset_index).tolist()
                entry["dataset_sample_index"] = numpy.asarray(ds.dataset_sample_index).tolist()
                entry["member_lens"] = [len(d) for d in ds.datasets]
            samples = []
            for i in range(min(len(ds), 12)):
                s = ds[i]
                samples.append({"tokens": s["tokens"].tolist(), "labels": s["labels"].tolist(),
                                "loss_mask": s["loss_mask"].tolist()})
            entry["samples"] = samples
            case["splits"][sname] = entry
        cases.append(case)
        shutil.rmtree(cache)
    dump("mcore_gpt.json", cases)


def mapping_fixture():
    """NeMo's SFT sample order (`_OnlineSampleMapping` in nemo/collections/llm/gpt/data/core.py), re-derived
    here from numpy primitives: shuffled block order, per-block permutation seeded seed + position, wrap."""
    cases = []
    for size, num, block, seed in ((10, 10, 1000000, 1), (7, 30, 1000000, 1), (25, 60, 8, 1), (13, 5, 4, 3)):
        required = max(num, size)
        bsz = min(block, size)
        nblocks = -(-required // bsz)
        lens = numpy.full(nblocks, bsz)
        if required % bsz:
            lens[-1] = required % bsz
        order = numpy.random.RandomState(seed=seed).permutation(numpy.arange(nblocks))
        lens = lens[order]
        ends = numpy.cumsum(lens)
        out = []
        for idx in range(num):
            b = int(numpy.digitize(idx, ends))
            start = order[b] * bsz
            perm = numpy.random.RandomState(seed=seed + b).permutation(numpy.arange(start, start + lens[b]))
            out.append(int(perm[idx - ends[b]] % size))
        cases.append({"dataset_size": size, "num_samples": num, "block_size": block, "seed": seed, "order": out})
    dump("nemo_sample_mapping.json", cases)


def training_text():
    return (CORPUS / "sonnets.txt").read_text()[:60000]


def hf_fixture():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    from tokenizers import normalizers, processors

    tok = Tokenizer(models.BPE())
    # Shaped like GPT-NeoX-20B's tokenizer.json: NFC normalizer, byte-level pre-tokenizer, post-processor
    # and decoder, special tokens as added tokens.
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([training_text()], trainer)
    tok.save(str(OUT / "tiny_bpe_tokenizer.json"))
    texts = SAMPLE_TEXTS + ["Cafe\u0301 decomposed, <|endoftext|> inline special"]
    expected = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    dump("tiny_bpe_expected.json", {"vocab_size": tok.get_vocab_size(), "cases": expected})
    return json.loads(tok.to_str())


def tiktoken_fixture(hf):
    """A NeMo-format vocabulary (rank, token_bytes, token_str) built from the tiny BPE's merges."""
    import tiktoken
    from tokenizers import pre_tokenizers

    # ByteLevel maps each byte to a printable char; invert it.
    alphabet = {}
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    alphabet = {chr(c): b for b, c in zip(bs, cs)}
    ranks = {bytes([i]): i for i in range(256)}
    for merge in hf["model"]["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ")
        tb = bytes(alphabet[ch] for ch in a + b)
        if tb not in ranks:
            ranks[tb] = len(ranks)
    vocab = [{"rank": r, "token_bytes": base64.b64encode(t).decode(), "token_str": t.decode("utf-8", "replace")}
             for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    dump("tiny_tiktoken_vocab.json", vocab)
    pattern = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
               "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}|"
               " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    enc = tiktoken.Encoding(name="tiny", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    expected = [{"text": t, "ids": [i + 1000 for i in enc.encode(t)]} for t in SAMPLE_TEXTS]
    dump("tiny_tiktoken_expected.json", {"num_ranks": len(ranks), "cases": expected})


def spm_fixture():
    import sentencepiece as spm

    src = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    src.write(training_text())
    src.close()
    out = {}
    nfkc_texts = SAMPLE_TEXTS + ["\uff21\uff22\uff23 full width, \u2460 circled, \ufb01 ligature",
                                 "non\u00a0breaking\u3000ideographic  spaces\tand\u200bzero width"]
    for kind, vocab, rule in (("bpe", 400, "identity"), ("unigram", 400, "identity"), ("bpe_nfkc", 400, "nmt_nfkc")):
        prefix = str(OUT / f"tiny_spm_{kind}")
        spm.SentencePieceTrainer.train(input=src.name, model_prefix=prefix, vocab_size=vocab,
                                       model_type=kind.split("_")[0], byte_fallback=True, character_coverage=1.0,
                                       minloglevel=2, normalization_rule_name=rule)
        os.remove(prefix + ".vocab")
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        out[kind] = {"vocab_size": sp.get_piece_size(), "bos": sp.bos_id(), "eos": sp.eos_id(),
                     "unk": sp.unk_id(), "pad": sp.pad_id(),
                     "cases": [{"text": t, "ids": sp.encode(t)} for t in (nfkc_texts if rule != "identity" else SAMPLE_TEXTS)]}
    os.remove(src.name)
    dump("tiny_spm_expected.json", out)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    what = sys.argv[1:] or ["indexed", "gpt", "mapping", "tok"]
    if "indexed" in what:
        indexed_fixtures()
    if "gpt" in what:
        gpt_fixtures()
    if "mapping" in what:
        mapping_fixture()
    if "tok" in what:
        hf = hf_fixture()
        tiktoken_fixture(hf)
        spm_fixture()


if __name__ == "__main__":
    main()
