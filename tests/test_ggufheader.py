"""The GGUF header reader, checked against the gguf package on real models and on a written one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

from orchestrator.ggufheader import GGML_TYPES, GgufError, read_facts


def test_the_type_table_matches_the_gguf_package() -> None:
    for kind, sizes in GGML_QUANT_SIZES.items():
        assert GGML_TYPES[int(kind)] == sizes, kind.name


@pytest.mark.real
def test_real_models_read_as_llama_server_reads_them(demo_model: Path, gemma_model: Path) -> None:
    # What llama-server itself says of these files ("CPU_Mapped model buffer size = ... MiB": every
    # tensor); the gguf package takes 5 to 20 s to read them, and agrees (see the written file below).
    assert round(read_facts(demo_model).weights_bytes / (1 << 20), 2) == 92.10
    assert round(read_facts(gemma_model).weights_bytes / (1 << 20), 2) == 235.16
    smol = read_facts(demo_model)
    assert (smol.architecture, smol.n_layer, smol.n_embd, smol.n_head, smol.n_head_kv) == (
        "llama",
        30,
        576,
        9,
        3,
    )
    assert (smol.head_dim_k, smol.n_ctx_train, smol.n_vocab, smol.n_swa) == (64, 8192, 49152, 0)
    gemma = read_facts(gemma_model)
    assert (gemma.architecture, gemma.n_layer, gemma.n_head_kv, gemma.head_dim_k) == ("gemma3", 18, 1, 256)
    assert (gemma.n_ctx_train, gemma.n_vocab, gemma.n_swa) == (32768, 262144, 512)


def test_a_written_gguf_with_per_layer_arrays(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length([128, 256])  # per layer: the largest counts
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_context_length(1024)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((64, 128), dtype=np.float32))
    writer.add_tensor(
        "blk.1.ffn_up.weight", np.zeros((64, 256), dtype=np.float16), raw_dtype=GGMLQuantizationType.F16
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    facts = read_facts(path)
    reference = GGUFReader(path)
    assert [(t.name, t.nbytes) for t in facts.tensors] == [
        (t.name, int(t.n_bytes)) for t in reference.tensors
    ]
    assert (facts.n_layer, facts.n_ff, facts.n_head_kv, facts.head_dim_k, facts.n_vocab) == (2, 256, 2, 16, 3)
    assert [(t.name, t.nbytes) for t in facts.tensors] == [
        ("blk.0.ffn_up.weight", 64 * 128 * 4),
        ("blk.1.ffn_up.weight", 64 * 256 * 2),
    ]


@pytest.mark.parametrize("content", [b"", b"JSON{}", b"GGUF\x03\x00\x00\x00"])
def test_what_is_not_a_gguf_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises((GgufError, ValueError)):
        read_facts(path)
