"""Captions for the ten Fashion-MNIST classes: training phrasings and held-out phrasings.

The text projection (``privdiff.encoders.text``) is learned on *public* images paired with
captions built from ``TRAIN_TEMPLATES`` × ``TRAIN_SYNONYMS``. ``HELDOUT_PHRASINGS`` are never seen in
training - no held-out string equals a training caption, the key words "trainers", "handbag" and "jeans" appear
in no training caption,
and "boots" only inside "ankle boots" - so they
measure whether the projection generalises through MiniLM's language knowledge rather than
memorising strings.
"""

from __future__ import annotations

import itertools

from privdiff.data.fashion_mnist import FASHION_MNIST_CLASSES

#: Sentence frames; ``{}`` receives a synonym (already carrying its article where needed).
TRAIN_TEMPLATES: list[str] = [
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a black and white photo of {}",
    "a grayscale image of {}",
    "a small low-resolution photo of {}",
    "a product photo of {}",
    "a catalogue image of {}",
    "a close-up of {}",
    "{} on a plain background",
    "a centred photo of {}",
    "a blurry photo of {}",
    "a clothing store image of {}",
    "a thumbnail of {}",
    "an online shop listing showing {}",
    "a fashion item: {}",
    "this is {}",
    "a simple drawing-like photo of {}",
    "a flat lay photo of {}",
]

#: Per-class noun phrases used in training (with articles).
TRAIN_SYNONYMS: dict[str, list[str]] = {
    "T-shirt/top": [
        "a t-shirt",
        "a tee",
        "a top",
        "a short-sleeved shirt",
        "a tank top",
        "a crew-neck tee",
        "a casual top",
        "a cotton t-shirt",
        "a blouse",
        "a plain tee shirt",
    ],
    "Trouser": [
        "trousers",
        "a pair of trousers",
        "pants",
        "a pair of pants",
        "slacks",
        "leggings",
        "long pants",
        "chinos",
        "denim pants",
        "sweatpants",
    ],
    "Pullover": [
        "a pullover",
        "a sweater",
        "a jumper",
        "a knitted sweater",
        "a sweatshirt",
        "a long-sleeved pullover",
        "a wool jumper",
        "a knit top with long sleeves",
        "a crewneck sweater",
        "a fleece pullover",
    ],
    "Dress": [
        "a dress",
        "a gown",
        "a summer dress",
        "a sundress",
        "an evening dress",
        "a frock",
        "a sleeveless dress",
        "a maxi dress",
        "a cocktail dress",
        "a women's dress",
    ],
    "Coat": [
        "a coat",
        "a jacket",
        "an overcoat",
        "a winter coat",
        "a parka",
        "a raincoat",
        "a zip-up jacket",
        "an anorak",
        "a trench coat",
        "a puffer coat",
    ],
    "Sandal": [
        "a sandal",
        "sandals",
        "a pair of sandals",
        "flip-flops",
        "a strappy sandal",
        "summer sandals",
        "open-toed shoes",
        "a slipper",
        "beach sandals",
        "a high-heeled sandal",
    ],
    "Shirt": [
        "a shirt",
        "a button-up shirt",
        "a dress shirt",
        "a collared shirt",
        "a flannel shirt",
        "a long-sleeved shirt",
        "a button-down",
        "a checked shirt",
        "a work shirt",
        "a linen shirt",
    ],
    "Sneaker": [
        "a sneaker",
        "sneakers",
        "a pair of sneakers",
        "running shoes",
        "athletic shoes",
        "a sports shoe",
        "a pair of kicks",
        "tennis shoes",
        "a canvas shoe",
        "a low-top shoe",
    ],
    "Bag": [
        "a bag",
        "a purse",
        "a tote bag",
        "a shoulder bag",
        "a backpack",
        "a clutch",
        "a satchel",
        "a shopping bag",
        "a leather bag",
        "a messenger bag",
    ],
    "Ankle boot": [
        "an ankle boot",
        "ankle boots",
        "a pair of ankle boots",
        "a chelsea boot",
        "a short boot",
        "a heeled ankle boot",
        "a leather ankle boot",
        "a bootie",
        "a lace-up ankle boot",
        "winter ankle boots",
    ],
}

#: Phrasings never used in training, per class (for zero-shot evaluation and the demo figure).
HELDOUT_PHRASINGS: dict[str, list[str]] = {
    "T-shirt/top": [
        "a graphic tee someone wears in summer",
        "a camisole",
        "a simple top to wear to the gym",
    ],
    "Trouser": ["jeans", "a pair of joggers", "cargo trousers"],
    "Pullover": ["a cardigan", "a cosy hoodie", "something warm and knitted to wear in winter"],
    "Dress": ["a wedding dress", "a party frock for a woman", "a skirt and bodice in one piece"],
    "Coat": ["a blazer", "a windbreaker", "outerwear for cold weather"],
    "Sandal": ["a pair of thongs for the beach", "espadrilles", "gladiator sandals"],
    "Shirt": [
        "an oxford shirt",
        "a denim shirt",
        "a shirt with buttons and a collar for the office",
    ],
    "Sneaker": ["a pair of trainers", "basketball shoes", "jogging shoes"],
    "Bag": ["a handbag", "a rucksack", "a briefcase"],
    "Ankle boot": ["boots", "combat boots", "a booted shoe that covers the ankle"],
}

#: The single canonical prompt per class (the "a photo of a ..." convention of CLIP zero-shot).
CANONICAL_PROMPTS: list[str] = [
    "a photo of a t-shirt",
    "a photo of trousers",
    "a photo of a pullover",
    "a photo of a dress",
    "a photo of a coat",
    "a photo of a sandal",
    "a photo of a shirt",
    "a photo of a sneaker",
    "a photo of a bag",
    "a photo of an ankle boot",
]


def training_captions() -> tuple[list[str], list[int]]:
    """All training captions (template × synonym) and their class labels, in a fixed order."""
    texts, labels = [], []
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        for template, synonym in itertools.product(TRAIN_TEMPLATES, TRAIN_SYNONYMS[name]):
            texts.append(template.format(synonym))
            labels.append(label)
    return texts, labels


def heldout_captions() -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        texts.extend(HELDOUT_PHRASINGS[name])
        labels.extend([label] * len(HELDOUT_PHRASINGS[name]))
    return texts, labels
