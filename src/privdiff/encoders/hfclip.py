"""transformers CLIP adapter: the CLIP space of an unCLIP-class decoder, loaded from a local folder.

Kandinsky 2.2, Stable unCLIP and IP-Adapter all generate from a CLIP *image* embedding
(``CLIPVisionModelWithProjection(...).image_embeds``). DP-RDM releases a noisy mean of unit
image embeddings of the private set (arXiv 2403.14421 §3), so the private index must be built
with the very image tower whose space the decoder was trained in, and the prompt embedded with
the matching text tower (``CLIPTextModelWithProjection(...).text_embeds``). This module wraps
that pair as one privdiff :class:`~privdiff.encoders.base.ImageEncoder` + ``TextEncoder``.

Folder layouts understood (``privdiff`` never downloads: ``local_files_only=True``):

* a full CLIP checkpoint (``config.json`` with ``model_type: clip``, e.g. a local copy of
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``): both towers and the tokenizer from the folder;
* a folder with sub-folders ``image_encoder/`` (``CLIPVisionModelWithProjection``) and optionally
  ``text_encoder/`` (``CLIPTextModelWithProjection``) + ``tokenizer/``: the layout of
  ``kandinsky-community/kandinsky-2-2-prior``;
* an image tower alone (``model_type: clip_vision_model``, e.g. IP-Adapter's
  ``models/image_encoder``): enough to build an index; encoding text then raises a
  :class:`~privdiff.errors.CheckpointError` naming what to add.

Preprocessing is OpenAI CLIP's (``clip_preprocess``); the size, mean and std come from a
``preprocessor_config.json`` next to the image tower when there is one, else from its config.

``space_id`` = ``hfclip/<projection_dim>d/<12 hex of sha256>`` over the image tower's
``config.json`` and weight files, so a different checkpoint of the same architecture never
shares a space. The text tower belongs to the space by living in the same folder (transformers
cannot check that two towers were trained together; pair them as their publisher did).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.encoders.openclip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess
from privdiff.encoders.text import check_texts
from privdiff.errors import CheckpointError, InvalidParameter, check_int

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_DOWNLOAD_HINT = (
    "download it elsewhere (e.g. `huggingface-cli download kandinsky-community/kandinsky-2-2-prior "
    "--local-dir DIR` for Kandinsky 2.2, or the `image_encoder` folder of stabilityai/stable-diffusion-2-1-unclip "
    "or h94/IP-Adapter `models/image_encoder` for Stable unCLIP / IP-Adapter) and copy the folder here"
)


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {exc}") from None


def _tower_digest(folder: Path) -> str:
    """sha256 (12 hex) over config.json and every weight file of one tower (names sorted)."""
    h = hashlib.sha256()
    cfg = _read_config(folder)
    h.update(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=True).encode())
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        raise CheckpointError(f"no weight file (*.safetensors / *.bin) in {folder}; {_DOWNLOAD_HINT}")
    for p in weights:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def resolve_clip_folder(path: str | Path) -> dict[str, Path | None]:
    """Where the image tower, text tower and tokenizer of a CLIP folder are (None where absent).

    Raises:
        CheckpointError: the folder or its image tower is missing (the message says what to get).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"CLIP folder {str(root)!r} does not exist; {_DOWNLOAD_HINT}")
    if (root / "config.json").is_file():
        model_type = _read_config(root).get("model_type")
        if model_type == "clip":
            tok = root if any((root / n).is_file() for n in ("tokenizer.json", "vocab.json")) else None
            return {"image": root, "text": root, "tokenizer": tok, "digest_root": root}
        if model_type == "clip_vision_model":
            return {"image": root, "text": None, "tokenizer": None, "digest_root": root}
        raise CheckpointError(
            f"{root / 'config.json'} declares model_type {model_type!r}; expected a CLIP model "
            "('clip' or 'clip_vision_model')"
        )
    image = root / "image_encoder"
    if not (image / "config.json").is_file():
        raise CheckpointError(
            f"{str(root)!r} holds neither a CLIP config.json nor image_encoder/config.json; " + _DOWNLOAD_HINT
        )
    text = root / "text_encoder"
    tok = root / "tokenizer"
    return {
        "image": image,
        "text": text if (text / "config.json").is_file() else None,
        "tokenizer": tok if tok.is_dir() else None,
        "digest_root": image,
    }


def clip_space_id(path: str | Path) -> str:
    """The ``space_id`` a :class:`CLIPEncoder` of ``path`` has, without loading the towers."""
    where = resolve_clip_folder(path)
    dim = _read_config(where["image"]).get("projection_dim")
    if dim is None:  # a full CLIP checkpoint keeps it at the top level
        dim = _read_config(where["image"]).get("vision_config", {}).get("projection_dim")
    return f"hfclip/{dim}d/{_tower_digest(where['digest_root'])}"


class CLIPEncoder:
    """ImageEncoder + TextEncoder over transformers' CLIP towers with projection (one space).

    Args:
        path: a local CLIP folder (module docstring). Nothing is downloaded.
        device: torch device string; dtype: torch dtype (default float32; float16 on GPUs).
        image_model, text_model, tokenizer: already built components instead of ``path`` (then
            ``space_id`` hashes the image tower's parameters).

    ``encode_images`` / ``encode_text`` return unit rows (what the index and the DP mechanism
    need); :meth:`raw_image_embeds` returns the unnormalised ``image_embeds`` a decoder consumes.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: str = "cpu",
        dtype: Any = None,
        image_model: Any = None,
        text_model: Any = None,
        tokenizer: Any = None,
    ):
        import torch
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

        self.device = device
        self.dtype = dtype if dtype is not None else torch.float32
        self.path = Path(path).expanduser() if path is not None else None
        self._text_missing = ""
        size = mean = std = None
        if image_model is None:
            if self.path is None:
                raise InvalidParameter("path", None, "a local CLIP folder (or image_model=...)")
            where = resolve_clip_folder(self.path)
            image_model = _load_tower(CLIPVisionModelWithProjection, where["image"])
            digest = _tower_digest(where["digest_root"])
            if text_model is None and where["text"] is not None:
                text_model = _load_tower(CLIPTextModelWithProjection, where["text"])
            if tokenizer is None and where["tokenizer"] is not None:
                tokenizer = CLIPTokenizer.from_pretrained(where["tokenizer"], local_files_only=True)
            if text_model is None or tokenizer is None:
                self._text_missing = (
                    f"{self.path} has no text tower + tokenizer (text_encoder/ and tokenizer/, or a full CLIP "
                    "checkpoint): copy the CLIPTextModelWithProjection and tokenizer of the same CLIP model there"
                )
            for folder in (where["image"], where["image"].parent / "image_processor", where["image"].parent):
                pre = folder / "preprocessor_config.json"
                if pre.is_file():
                    size, mean, std = _read_preprocessor(pre)
                    break
        else:
            from privdiff.encoders.openclip import params_digest

            digest = params_digest(image_model)
            if text_model is None or tokenizer is None:
                self._text_missing = "this CLIPEncoder was built without text_model and tokenizer"
        self.image_model = image_model.to(device=device, dtype=self.dtype).eval()
        self.text_model = text_model.to(device=device, dtype=self.dtype).eval() if text_model is not None else None
        self.tokenizer = tokenizer
        vcfg = self.image_model.config
        self.image_size = check_int("image_size", size or vcfg.image_size, minimum=8, maximum=4096)
        self.mean = tuple(mean or OPENAI_CLIP_MEAN)
        self.std = tuple(std or OPENAI_CLIP_STD)
        self.dim = int(vcfg.projection_dim)
        if self.text_model is not None and int(self.text_model.config.projection_dim) != self.dim:
            raise CheckpointError(
                f"text tower projects to {self.text_model.config.projection_dim} dims, image tower to {self.dim}: "
                "they are not one CLIP model"
            )
        self.space_id = f"hfclip/{self.dim}d/{digest}"

    def __repr__(self) -> str:
        return f"CLIPEncoder(space_id={self.space_id!r}, dim={self.dim}, image_size={self.image_size})"

    @property
    def has_text(self) -> bool:
        return not self._text_missing

    def preprocess(self, images: np.ndarray):
        return clip_preprocess(images, self.image_size, self.mean, self.std).to(self.device, self.dtype)

    def _image_embeds(self, pixel_values):
        import torch

        with torch.inference_mode():
            return self.image_model(pixel_values=pixel_values).image_embeds.float().cpu()

    def raw_image_embeds(self, images: np.ndarray, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Unnormalised ``image_embeds`` (N, dim) float32: what the decoders were trained on."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            self.preprocess(images)  # raises the typed error
        starts = range(0, images.shape[0], batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, total=len(starts), desc=f"encoding ({self.space_id})", unit="batch")
        out = np.empty((images.shape[0], self.dim), dtype=np.float32)
        for s in starts:
            out[s : s + batch_size] = self._image_embeds(self.preprocess(images[s : s + batch_size])).numpy()
        return out

    def encode_images(self, images: np.ndarray, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return l2_normalize(self.raw_image_embeds(images, batch_size=batch_size, progress=progress))

    def zero_image_embed(self) -> np.ndarray:
        """``image_embeds`` of an all-zero *normalised* pixel tensor, (dim,) float32: the negative
        (unconditional) image embedding Kandinsky 2.2's prior pipeline uses (``get_zero_embed``)."""
        import torch

        x = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
        return self._image_embeds(x).numpy()[0]

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._text_missing:
            raise CheckpointError(f"cannot embed prompts: {self._text_missing}")
        texts = check_texts(texts)
        max_len = int(self.text_model.config.max_position_embeddings)
        tokens = self.tokenizer(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            feats = self.text_model(
                input_ids=tokens.input_ids.to(self.device),
                attention_mask=tokens.attention_mask.to(self.device),
            ).text_embeds
        return l2_normalize(feats.float().cpu().numpy())


def _load_tower(cls, folder: Path):
    """``cls.from_pretrained(folder)`` offline, refusing a checkpoint that lacks some of the
    tower's weights: transformers would initialise them at random (e.g. the projection when a
    ``CLIPTextModel`` without projection, such as Stable Diffusion's text encoder, is loaded as a
    ``CLIPTextModelWithProjection``), silently leaving the CLIP space."""
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load {cls.__name__} from {folder}: {exc}") from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"{folder} is not a complete {cls.__name__} checkpoint: {len(missing)} weight(s) missing "
            f"(e.g. {missing[0]!r}); it would be initialised at random. Use the CLIP towers *with projection* "
            "the decoder was trained with"
        )
    return model


def _read_preprocessor(path: Path) -> tuple[int | None, Any, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    crop = cfg.get("crop_size")
    size = crop.get("height") if isinstance(crop, dict) else crop
    if size is None:
        s = cfg.get("size")
        size = s.get("shortest_edge") if isinstance(s, dict) else s
    return (int(size) if size else None), cfg.get("image_mean"), cfg.get("image_std")
