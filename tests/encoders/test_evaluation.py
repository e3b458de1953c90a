import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.encoders.calibrate import noisy_mean_accuracy
from privdiff.encoders.evaluation import (
    class_precision_at_k,
    text_to_image_precision,
    zero_shot_topk,
)


def _clusters(seed=0, n=30, dim=8, spread=0.1):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3] * 5
    labels = np.repeat(np.arange(3), n)
    return l2_normalize(centres[labels] + spread * rng.normal(size=(len(labels), dim))), labels


def test_precision_is_one_for_separated_clusters_and_chance_for_shuffled_labels():
    emb, labels = _clusters()
    assert class_precision_at_k(emb, labels, k=5) == 1.0
    shuffled = np.random.default_rng(1).permutation(labels)
    assert class_precision_at_k(emb, shuffled, k=5) < 0.6


def test_leave_one_out_excludes_the_query_itself():
    emb = l2_normalize(np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]]))
    labels = np.array([0, 1, 1])
    # With itself counted every query would score a hit (precision 1); left out, only query 2 does.
    assert class_precision_at_k(emb, labels, k=1) == 1 / 3  # only query 2 finds a same-label neighbour


def test_zero_shot_and_text_to_image_precision():
    emb, labels = _clusters()
    protos = np.eye(8)[:3]
    acc = zero_shot_topk(emb, labels, protos, ks=(1, 2))
    assert acc[1] == 1.0 and acc[2] == 1.0
    wrong = protos[[1, 2, 0]]
    assert zero_shot_topk(emb, labels, wrong, ks=(1,))[1] == 0.0
    assert text_to_image_precision(protos, np.arange(3), emb, labels, k=10) == 1.0


def test_noisy_mean_accuracy_falls_as_noise_grows():
    emb, labels = _clusters(n=60, dim=64)
    clean = noisy_mean_accuracy(emb, labels, emb, labels, k=5, noise_std=0.0, n_queries=180)
    noisy = noisy_mean_accuracy(emb, labels, emb, labels, k=5, noise_std=1.0, n_queries=180)
    assert clean == 1.0 and noisy < 0.8
