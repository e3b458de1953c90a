"""Named encoders, cached per process: ``load_image_encoder(name)`` / ``load_text_encoder(name)``.

Names understood by both loaders:

* ``"default"``: the space of the shipped RDM (:data:`DEFAULT_SPACE_ID`, ``fmnist-public-cnn/v1``):
  a small CNN trained on the *public* split only (:mod:`privdiff.encoders.public_cnn`) and MiniLM +
  the learned projection into it. Where a model is known (``make_pipeline``, generate, serve, the
  demo), ``"default"`` means that model's own space instead (:func:`encoder_for_model`);
* a space id, e.g. ``"fmnist-public-cnn/v1"`` (what an index or checkpoint stores), or the same
  without ``/v1``;
* ``"effnet-lite0-64px-c/v1"``: EfficientNet-Lite0 at 64 px centred on public data (the default
  until the shipped RDM moved to the public CNN's space; :data:`EFFNET_SPACE_ID`), with its MiniLM
  projection; image-only: ``"effnet-lite0-<S>px"`` (raw features at S px, any S in 32..512);
* ``"fmnist-public-cnn+effnet-lite0-64px-c/v1"``: the public CNN concatenated with the EfficientNet
  space; text encoders exist once their projection is shipped;
* ``"openclip:<model_name>@<checkpoint path>"``: the open_clip adapter (needs open_clip);
* ``"clip:<local folder>"``: transformers' CLIP towers (:mod:`privdiff.encoders.hfclip`), the space
  of Kandinsky 2.2 / Stable unCLIP / IP-Adapter decoders (:mod:`privdiff.decoders`).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from privdiff.encoders.base import ImageEncoder, TextEncoder
from privdiff.encoders.efficientnet import (
    ASSET_DIR,
    EfficientNetLite0Encoder,
    centre_asset_path,
    effnet_space_id,
    load_centre,
)
from privdiff.encoders.public_cnn import SPACE_ID as PUBLIC_CNN_SPACE_ID
from privdiff.errors import CheckpointError, EncoderMismatch, InvalidParameter

DEFAULT_INPUT_SIZE = 64
#: The centred 64 px EfficientNet space (the default before the shipped RDM moved to the public CNN).
EFFNET_SPACE_ID = effnet_space_id(DEFAULT_INPUT_SIZE, centred=True)
#: What ``"default"`` names: the space of the shipped RDM (``assets/checkpoints/rdm/fashion-mnist``),
#: so an index built with the default encoder is one the shipped model can retrieve from.
DEFAULT_SPACE_ID = PUBLIC_CNN_SPACE_ID
_EFFNET_RE = re.compile(r"^effnet-lite0-(?P<size>\d+)px(?P<c>-c)?(?:/v1)?$")
_LOCK = threading.RLock()
_IMAGE_CACHE: dict[str, ImageEncoder] = {}
_TEXT_CACHE: dict[str, TextEncoder] = {}
_VALID = (
    "'default', 'effnet-lite0-<size>px[-c][/v1]', 'fmnist-public-cnn[+effnet-lite0-64px-c]/v1', "
    "'openclip:<model_name>@<checkpoint>', 'clip:<folder>'"
)


def _public_cnn_space(key: str) -> str | None:
    """The canonical public-CNN space id ``key`` names (with or without ``/v1``), else None."""
    from privdiff.encoders.public_cnn import CONCAT_SPACE_ID, SPACE_ID

    for space in (SPACE_ID, CONCAT_SPACE_ID):
        if key in (space, space.removesuffix("/v1")):
            return space
    return None


def projection_stem(space_id: str) -> Path:
    """Where the MiniLM projection into ``space_id`` is shipped (without suffix)."""
    return ASSET_DIR / ("minilm-l6-to-" + space_id.replace("/", "_"))


def _openclip(name: str):
    spec = name.split(":", 1)[1]
    model_name, sep, ckpt = spec.partition("@")
    if not sep or not model_name or not ckpt:
        raise InvalidParameter("encoder", name, "'openclip:<model_name>@<checkpoint path>'")
    from privdiff.encoders.openclip import OpenCLIPEncoder

    return OpenCLIPEncoder(model_name, ckpt)


def _hfclip(name: str):
    folder = name.split(":", 1)[1]
    if not folder:
        raise InvalidParameter("encoder", name, "'clip:<local CLIP folder>'")
    from privdiff.encoders.hfclip import CLIPEncoder

    return CLIPEncoder(folder)


def _resolve(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameter("encoder", name, _VALID)
    name = name.strip()
    return DEFAULT_SPACE_ID if name == "default" else name


def encoder_for_model(name: str, model_space_id: str) -> str:
    """The encoder name to load for a model in ``model_space_id``: ``"default"`` means the model's
    own space (a user's RDM trained in another space than the shipped one still works with the
    default encoder); any other name is kept, so a mismatch stays the model's error to report."""
    if isinstance(name, str) and name.strip() == "default":
        return model_space_id
    return name


def load_image_encoder(name: str = "default") -> ImageEncoder:
    """An image encoder by name (see the module docstring); the same object for the same name."""
    key = _resolve(name)
    with _LOCK:
        if key in _IMAGE_CACHE:
            return _IMAGE_CACHE[key]
        m = _EFFNET_RE.match(key)
        if m:
            size = int(m.group("size"))
            if m.group("c"):
                path = centre_asset_path(size)
                if not path.is_file():
                    raise CheckpointError(
                        f"no centring vector shipped for {size} px ({path.name}); available: "
                        f"{sorted(p.name for p in ASSET_DIR.glob('*-centre.safetensors'))}; build one with "
                        f"`python -m privdiff.encoders.calibrate --asset-size {size}`"
                    )
                centre, meta = load_centre(path)
                enc = EfficientNetLite0Encoder(
                    size, centre=centre, centre_id=f"{meta.get('source')} ({meta.get('sha256_12')})"
                )
            else:
                enc = EfficientNetLite0Encoder(size)
        elif key.startswith("openclip:"):
            enc = _openclip(key)
        elif key.startswith("clip:"):
            enc = _hfclip(key)
        elif (space := _public_cnn_space(key)) is not None:
            from privdiff.encoders.public_cnn import SPACE_ID, ConcatEncoder, load_public_cnn

            cnn = load_public_cnn()
            enc = cnn if space == SPACE_ID else ConcatEncoder([cnn, load_image_encoder(EFFNET_SPACE_ID)], space)
        else:
            raise InvalidParameter("encoder", name, _VALID)
        _IMAGE_CACHE[key] = enc
        return enc


def load_text_encoder(name: str = "default") -> TextEncoder:
    """A text encoder into the space ``name`` designates (its ``space_id`` equals the image one's)."""
    key = _resolve(name)
    with _LOCK:
        if key in _TEXT_CACHE:
            return _TEXT_CACHE[key]
        m = _EFFNET_RE.match(key)
        if m:
            from privdiff.encoders.text import MiniLMProjectionTextEncoder

            space_id = effnet_space_id(int(m.group("size")), bool(m.group("c")))
            stem = projection_stem(space_id)
            if not stem.with_suffix(".json").is_file():
                shipped = sorted(p.stem for p in ASSET_DIR.glob("minilm-l6-to-*.json"))
                raise CheckpointError(
                    f"no text projection into {space_id!r} is shipped (available: {shipped}); "
                    "train one with `python experiments/text_projection.py --space <space>`"
                )
            enc = MiniLMProjectionTextEncoder.from_asset(stem)
            # The space id names the recipe; the fingerprint pins the exact shipped centre, so a
            # rebuilt centre cannot silently pair with a projection trained against another one.
            trained_centre = enc.config.get("image_centre_sha256_12")
            image_centre = getattr(load_image_encoder(space_id), "centre_sha256_12", None)
            if trained_centre is not None and trained_centre != image_centre:
                raise EncoderMismatch(
                    expected=str(image_centre),
                    found=str(trained_centre),
                    what=f"text projection {stem.name} (centring-vector fingerprint)",
                )
            if enc.space_id != space_id:
                raise CheckpointError(f"{stem.name}.json declares space {enc.space_id!r}, expected {space_id!r}")
        elif (space_id := _public_cnn_space(key)) is not None:
            from privdiff.encoders.text import MiniLMProjectionTextEncoder

            stem = projection_stem(space_id)
            if not stem.with_suffix(".json").is_file():
                raise CheckpointError(
                    f"no text projection into {space_id!r} is shipped; train one with "
                    f"`python experiments/public_encoder.py --spaces {space_id}`"
                )
            enc = MiniLMProjectionTextEncoder.from_asset(stem)
            # The projection records the image encoder's weights+centre fingerprint: a retrained
            # CNN under the same space id cannot silently pair with an old projection.
            image_fp = getattr(load_image_encoder(space_id), "fingerprint", None)
            if enc.config.get("image_fingerprint") != image_fp or enc.space_id != space_id:
                raise EncoderMismatch(
                    expected=f"{space_id} {image_fp}",
                    found=f"{enc.space_id} {enc.config.get('image_fingerprint')}",
                    what=f"text projection {stem.name}",
                )
        elif key.startswith("openclip:"):
            # One object serves both towers, so an image and text encoder share the cache entry.
            enc = _IMAGE_CACHE.get(key) or _openclip(key)
            _IMAGE_CACHE.setdefault(key, enc)
        elif key.startswith("clip:"):
            enc = _IMAGE_CACHE.get(key) or _hfclip(key)
            _IMAGE_CACHE.setdefault(key, enc)
        else:
            raise InvalidParameter("encoder", name, _VALID)
        _TEXT_CACHE[key] = enc
        return enc
