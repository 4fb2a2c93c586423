"""The in-process merges and the fine-tuning harness: the exact weighted mean, the codec merge with and
without error feedback, and merged adapters that beat every peer's local one on held-out data."""

from __future__ import annotations

import numpy as np
import pytest

from pyagent.lora.adapter import LoraConfig
from pyagent.lora.codecs import LoraCodec
from pyagent.lora.finetune import TaskConfig, TrainConfig, make_task, run_rounds, train_alone
from pyagent.lora.merge import CodecMerge, exact_mean, weighted_mean


def deltas(seed: int, peers: int = 3, numel: int = 5000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(numel).astype(np.float32) for _ in range(peers)]


def test_exact_mean_weights_by_sample_count_and_counts_raw_float32() -> None:
    arrays = deltas(0)
    merged = exact_mean(0, arrays, [1, 1, 2])
    np.testing.assert_allclose(
        merged.delta, (arrays[0] + arrays[1] + 2 * arrays[2]) / 4, rtol=1e-6, atol=1e-6
    )
    assert merged.bytes_sent == (20000, 20000, 20000)
    with pytest.raises(ValueError, match="positive"):
        weighted_mean(arrays, [0, 0, 0])


def test_codec_merge_is_the_exact_mean_of_what_was_decoded() -> None:
    arrays = deltas(1)
    fp16 = CodecMerge(LoraCodec("fp16"), error_feedback=False)(0, arrays, [1, 2, 3])
    np.testing.assert_allclose(fp16.delta, exact_mean(0, arrays, [1, 2, 3]).delta, rtol=1e-3, atol=1e-3)
    sparse = CodecMerge(LoraCodec("int2", 64, 1000, 30), error_feedback=False)(0, arrays, [1, 2, 3])
    assert max(sparse.bytes_sent) < 0.05 * arrays[0].nbytes
    assert np.count_nonzero(sparse.delta) <= 3 * 150


def test_error_feedback_delivers_over_rounds_what_one_round_drops() -> None:
    codec = LoraCodec("int2", 64, 1000, 100)
    arrays = deltas(2)
    exact = exact_mean(0, arrays, [1, 1, 1]).delta
    with_feedback, without = CodecMerge(codec), CodecMerge(codec, error_feedback=False)
    rounds = 40
    sent_with = sum(with_feedback(r, arrays, [1, 1, 1]).delta for r in range(rounds))
    sent_without = sum(without(r, arrays, [1, 1, 1]).delta for r in range(rounds))
    error_with = np.linalg.norm(sent_with - rounds * exact) / np.linalg.norm(rounds * exact)
    error_without = np.linalg.norm(sent_without - rounds * exact) / np.linalg.norm(rounds * exact)
    assert error_with < 0.1 < error_without


def test_merged_adapter_beats_every_peer_trained_alone() -> None:
    task = make_task(TaskConfig(peers=4, samples_per_peer=512, eval_samples=1024))
    lora = LoraConfig(task.target_modules, rank=4, alpha=8)
    train = TrainConfig(local_steps=10)
    merge = CodecMerge(LoraCodec("int2", 64, 1024, 31))
    records, peers = run_rounds(task, lora, train, merge, rounds=15)
    alone = train_alone(task, lora, train, rounds=15)
    assert records[-1].eval_loss < min(alone[-1])
    assert records[-1].eval_loss < records[0].eval_loss
    assert all(np.array_equal(peer.adapter.flat(), peers[0].adapter.flat()) for peer in peers)
    assert all(0 < sent < peers[0].adapter.layout.numel for record in records for sent in record.bytes_sent)
