from privdiff.data import FASHION_MNIST_CLASSES
from privdiff.encoders.captions import (
    CANONICAL_PROMPTS,
    HELDOUT_PHRASINGS,
    TRAIN_SYNONYMS,
    heldout_captions,
    training_captions,
)


def test_training_captions_cover_every_class_with_many_wordings():
    texts, labels = training_captions()
    assert set(labels) == set(range(10))
    assert len(set(texts)) == len(texts)
    assert all(len(TRAIN_SYNONYMS[c]) >= 10 for c in FASHION_MNIST_CLASSES)
    assert len(CANONICAL_PROMPTS) == 10


def test_heldout_phrasings_never_appear_in_training():
    texts, _ = training_captions()
    held, held_labels = heldout_captions()
    assert not set(held) & set(texts)
    joined = " ".join(texts)
    for word in ("trainers", "handbag", "jeans", "rucksack", "cardigan", "blazer"):
        assert word not in joined
    assert "boots" in HELDOUT_PHRASINGS["Ankle boot"] and "a pair of trainers" in HELDOUT_PHRASINGS["Sneaker"]
    assert sorted(set(held_labels)) == list(range(10))
