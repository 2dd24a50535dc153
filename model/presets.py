"""Pathology foundation models as timm architectures: the publishers' own construction arguments.

A preset names a timm architecture and the keyword arguments its publisher passes to
``timm.create_model`` (from each model card on the hub; see ``docs/model.md``), its input size and
normalisation, the embedding the publisher reads out, its licence and where the weights come from.
Nothing here downloads: models are built with random weights and the user passes the weights file
they downloaded (or asks for the hub explicitly).

This module imports neither torch nor timm, so ``histosearch backbones`` lists presets instantly;
the two layer arguments that are classes (``SwiGLUPacked``, ``SiLU``) are named and resolved by
`model.timm_backbones`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# ImageNet statistics: the usual choice, and the right one for torchvision's pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bioptimus's normalisation (H-optimus-0's model card), also used by H-optimus-1 and H0-mini.
BIOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
BIOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
# Lunit's statistics of their pre-training tiles (lunit-io/benchmark-ssl-pathology README).
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
HALF = (0.5, 0.5, 0.5)

# The SwiGLU MLP of the DINOv2-style giants: mlp_layer=SwiGLUPacked, act_layer=SiLU.
SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}

# How the publisher turns the token sequence into its embedding.
EmbeddingReadout = Literal["class_token", "class_token+mean_patch"]
# The key layout of the published weights file: timm's own, or Hugging Face transformers' Dinov2.
KeyLayout = Literal["timm", "transformers-dinov2"]


@dataclass(frozen=True)
class Preset:
    """One foundation model: how to build it in timm and how to feed it."""

    name: str
    title: str
    architecture: str  # a timm model name
    timm_kwargs: dict[str, Any]
    embedding_dim: int
    readout: EmbeddingReadout
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    parameters: str
    licence: str
    weights: str  # where a user gets the file
    hub: str | None = None  # timm's `hf-hub:` id, where timm itself can load the weights
    key_layout: KeyLayout = "timm"
    note: str = ""

    def create_kwargs(self) -> dict[str, Any]:
        """Everything passed to ``timm.create_model`` besides the name (layers still by name)."""
        return {"num_classes": 0, **self.timm_kwargs}


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="uni",
            title="UNI (Mahmood Lab)",
            architecture="vit_large_patch16_224",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 16,
                "init_values": 1e-5,
                "dynamic_img_size": True,
            },
            embedding_dim=1024,
            readout="class_token",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            parameters="304M",
            licence="CC-BY-NC-ND-4.0, gated (access request on the hub)",
            weights="huggingface.co/MahmoodLab/UNI: pytorch_model.bin",
            hub="hf-hub:MahmoodLab/UNI",
        ),
        Preset(
            name="uni2-h",
            title="UNI2-h (Mahmood Lab)",
            architecture="vit_giant_patch14_224",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "no_embed_class": True,
                **SWIGLU,
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            embedding_dim=1536,
            readout="class_token",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            parameters="681M",
            licence="CC-BY-NC-ND-4.0, gated",
            weights="huggingface.co/MahmoodLab/UNI2-h: pytorch_model.bin",
            hub="hf-hub:MahmoodLab/UNI2-h",
        ),
        Preset(
            name="virchow2",
            title="Virchow2 (Paige)",
            architecture="vit_huge_patch14_224",
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.3375,
                "reg_tokens": 4,
                "global_pool": "",
                "dynamic_img_size": True,
                **SWIGLU,
            },
            embedding_dim=2560,
            readout="class_token+mean_patch",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            parameters="632M",
            licence="CC-BY-NC-ND-4.0, gated",
            weights="huggingface.co/paige-ai/Virchow2: pytorch_model.bin",
            hub="hf-hub:paige-ai/Virchow2",
            note="embedding = class token + mean of the patch tokens (1280 each), registers "
            "excluded, as Paige's card reads it out",
        ),
        Preset(
            name="h-optimus-0",
            title="H-optimus-0 (Bioptimus)",
            architecture="vit_giant_patch14_reg4_dinov2",
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "global_pool": "token",
                "dynamic_img_size": False,
            },
            embedding_dim=1536,
            readout="class_token",
            input_size=224,
            mean=BIOPTIMUS_MEAN,
            std=BIOPTIMUS_STD,
            parameters="1.1B",
            licence="Apache-2.0 (gating unverified)",
            weights="huggingface.co/bioptimus/H-optimus-0: pytorch_model.bin (4.5 GB)",
            hub="hf-hub:bioptimus/H-optimus-0",
            note="fixed 224 px input (dynamic_img_size=False, as published)",
        ),
        Preset(
            name="h-optimus-1",
            title="H-optimus-1 (Bioptimus)",
            architecture="vit_giant_patch14_reg4_dinov2",
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "global_pool": "token",
                "dynamic_img_size": False,
            },
            embedding_dim=1536,
            readout="class_token",
            input_size=224,
            mean=BIOPTIMUS_MEAN,
            std=BIOPTIMUS_STD,
            parameters="1.1B",
            licence="gated (licence unverified)",
            weights="huggingface.co/bioptimus/H-optimus-1: pytorch_model.bin",
            hub="hf-hub:bioptimus/H-optimus-1",
            note="same construction as H-optimus-0 (Bioptimus's card); fixed 224 px input",
        ),
        Preset(
            name="h0-mini",
            title="H0-mini (Bioptimus, distilled from H-optimus-0)",
            architecture="vit_base_patch14_reg4_dinov2",
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "global_pool": "",
                "dynamic_img_size": True,
                **SWIGLU,
            },
            embedding_dim=768,
            readout="class_token",
            input_size=224,
            mean=BIOPTIMUS_MEAN,
            std=BIOPTIMUS_STD,
            parameters="86M",
            licence="gated (licence unverified)",
            weights="huggingface.co/bioptimus/H0-mini: model.safetensors",
            hub="hf-hub:bioptimus/H0-mini",
            note="the card passes mlp_layer=SwiGLUPacked, act_layer=SiLU; mlp_ratio and the "
            "normalisation come from its hub config (unverified here); the card also offers "
            "class token + mean patch (1536)",
        ),
        Preset(
            name="prov-gigapath",
            title="Prov-GigaPath tile encoder (Providence, Microsoft)",
            architecture="vit_giant_patch14_dinov2",
            timm_kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
            },
            embedding_dim=1536,
            readout="class_token",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            parameters="1.1B",
            licence="gated, non-commercial research use",
            weights="huggingface.co/prov-gigapath/prov-gigapath: pytorch_model.bin",
            hub="hf-hub:prov-gigapath/prov-gigapath",
            note="the hub config's arguments (patch 16 on the patch-14 DINOv2-g definition, whose "
            "SwiGLU MLP it keeps); fixed 224 px input",
        ),
        Preset(
            name="kaiko-vits16",
            title="Kaiko ViT-S/16 (towards large pathology FMs)",
            architecture="vit_small_patch16_224",
            timm_kwargs={"dynamic_img_size": True},
            embedding_dim=384,
            readout="class_token",
            input_size=224,
            mean=HALF,
            std=HALF,
            parameters="22M",
            licence="non-commercial, not gated",
            weights="torch.hub kaiko-ai/towards_large_pathology_fms 'vits16' (its release file)",
            note="published through torch.hub, which builds this timm model and loads a timm "
            "state dict: pass the downloaded file",
        ),
        Preset(
            name="lunit-vits16",
            title="Lunit DINO ViT-S/16 (benchmark-ssl-pathology)",
            architecture="vit_small_patch16_224",
            timm_kwargs={"img_size": 224, "patch_size": 16},
            embedding_dim=384,
            readout="class_token",
            input_size=224,
            mean=LUNIT_MEAN,
            std=LUNIT_STD,
            parameters="22M",
            licence="non-commercial",
            weights="github.com/lunit-io/benchmark-ssl-pathology releases: "
            "dino_vit_small_patch16_ep200.torch",
            note="Lunit's code builds timm's VisionTransformer(embed 384, 6 heads, patch 16) and "
            "loads this file",
        ),
        Preset(
            name="phikon-v2",
            title="Phikon-v2 (Owkin)",
            architecture="vit_large_patch16_224",
            timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5},
            embedding_dim=1024,
            readout="class_token",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            parameters="300M",
            licence="non-commercial",
            weights="huggingface.co/owkin/phikon-v2: model.safetensors (transformers layout)",
            key_layout="transformers-dinov2",
            note="published for transformers (Dinov2Model); the same ViT-L/16 with layer scale "
            "is built in timm and the file's keys are mapped onto it (query/key/value fused into "
            "qkv). timm's hub loader cannot read it: pass the file",
        ),
    )
}


def preset_of(backbone: str) -> Preset | None:
    """The preset a card's ``backbone`` names, or None for ``timm:<name>`` and torchvision names."""
    return PRESETS.get(backbone)
