"""Text-to-image models for the generation track: one interface for every denoiser.

A ``TextToImageModel`` is a Stable-Diffusion-style stack built from diffusers parts:

    prompt --tokenizer--> tokens --text encoder--> token states (N, L, W)
    token states --cross-attention--> UNet (denoiser) <-- noisy latents, timestep
    latents <--optional VAE--> pixels

The embedded default ``mini-t2i`` (pixel space, MiniLM text tower), the test-sized
``tiny-t2i`` and any local pipeline folder (``diffusers:PATH``) are all instances,
and are all stored in the same folder layout (``tokenizer/``, ``text_encoder/``,
``unet/``, ``scheduler/``, optional ``vae/``), so tests run the benchmark's code path.

Methods reach into it at two depths: the text side (a new input token for textual
inversion; a concept vector among the token *states* for ConES, which then never runs
the text encoder) and the UNet's weights (full fine-tuning, cross-attention K/V).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunebench.errors import ConfigError
from tunebench.models.base import TokenBatch

SETTINGS_FILE = "tunebench_t2i.json"  # optional: what a plain diffusers folder does not say
REQUIRED_PARTS = ("tokenizer", "text_encoder", "unet", "scheduler")


@dataclass(frozen=True)
class T2ISettings:
    """How tunebench drives a pipeline folder; SD defaults when the folder has no file."""

    # Prompts are padded to this many tokens (SD: the tokenizer's 77). None = the tokenizer's
    # own limit (``model_max_length``, what a diffusers pipeline pads to), capped at the
    # text encoder's position table for tokenizers that declare no limit.
    max_length: int | None = None
    # Pass the padding mask to the UNet's cross-attention. SD was trained without it (it
    # attends to CLIP's padding states); mini-t2i, conditioned on BERT states, with it.
    encoder_mask: bool = False
    # Native images are padded by this many pixels a side (28 -> 32) instead of resized,
    # so generated images crop back to the native grid exactly.
    pad: int = 0

    @classmethod
    def read(cls, folder: Path) -> T2ISettings:
        path = folder / SETTINGS_FILE
        if not path.is_file():
            return cls()
        values = json.loads(path.read_text())
        return cls(**{k: values[k] for k in ("max_length", "encoder_mask", "pad") if k in values})

    def write(self, folder: Path) -> None:
        (folder / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


class TextToImageModel(nn.Module):
    """Tokenizer, text encoder, UNet, noise schedule and an optional VAE."""

    # Random weights kept only to time training steps (the text-encoder-share study).
    timing_only: bool = False

    def __init__(
        self,
        *,
        tokenizer,
        text_encoder: nn.Module,
        unet: nn.Module,
        scheduler_config: dict,
        vae: nn.Module | None = None,
        settings: T2ISettings | None = None,
        content_id: str,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.settings = settings = settings or T2ISettings()
        self.content_id = content_id
        self.scheduler_config = dict(scheduler_config)
        prediction = self.scheduler_config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"scheduler prediction_type {prediction!r} is not supported (epsilon, v_prediction)")
        limit = getattr(text_encoder.config, "max_position_embeddings", 512)
        self.max_length = min(settings.max_length or tokenizer.model_max_length, limit)
        self.latent_channels = int(unet.config.in_channels)
        self.latent_size = int(unet.config.sample_size)
        if vae is not None:
            self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.image_channels = int(vae.config.in_channels)
        else:
            self.vae_factor = 1
            self.image_channels = self.latent_channels
        self.image_size = self.latent_size * self.vae_factor
        self.native_size = self.image_size - 2 * settings.pad

    # ---- text side ---------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> TokenBatch:
        """Every prompt padded to ``max_length``, called as diffusers' ``encode_prompt``
        calls the tokenizer (padding="max_length", truncation on), so the ids are the ones
        a standard pipeline feeds its text encoder; conditioning of any two prompts stacks.

        Where the pipeline would silently cut a long prompt (and warn), this refuses it:
        a tuning prompt that lost its last words, possibly the concept's slot, would
        measure something else than its text says. Within the limit the two agree.
        """
        texts = list(texts)
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        if lengths and max(lengths) > self.max_length:
            longest = texts[lengths.index(max(lengths))]
            raise ConfigError(f"prompt {longest!r} is longer than {self.max_length} tokens: shorten it")
        enc = self.tokenizer(texts, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return TokenBatch(enc["input_ids"], enc["attention_mask"])

    def word_token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_embedding(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    @property
    def text_width(self) -> int:
        return self.token_embedding().embedding_dim

    def encode_prompt_tokens(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token-level conditioning (N, L, W): the text encoder's last hidden states,
        computed as the loaded pipeline computes them (the padding mask passed only when
        ``text_mask`` says so), so that training, sampling and a standard pipeline agree.

        With ``inputs_embeds`` (N, L, W) those vectors replace the token-embedding lookup.
        It is done with a hook on the embedding table rather than the encoder's own
        ``inputs_embeds`` argument, because some text encoders (transformers' CLIP text
        model) no longer take one; position embeddings are still added by the encoder.
        """
        device = self.device
        tokens = tokens.to(device)
        mask = tokens.attention_mask if self.text_mask else None
        handle = None
        if inputs_embeds is not None:
            handle = self.token_embedding().register_forward_hook(lambda _m, _i, _o: inputs_embeds)
        try:
            out = self.text_encoder(input_ids=tokens.input_ids, attention_mask=mask)
        finally:
            if handle is not None:
                handle.remove()
        return out.last_hidden_state

    @property
    def text_mask(self) -> bool:
        """Whether the text encoder gets the padding mask: diffusers' rule, read where
        ``StableDiffusionPipeline.encode_prompt`` reads it (``use_attention_mask`` on the
        text encoder's config; absent means no). SD's CLIP was trained without one: its
        real-token states are the same either way (causal attention), but the padding
        states, which the UNet attends to, are not. mini-t2i's BERT tower declares True
        (``t2i_backbones.masked_text_encoder``). Read at each call, not cached, so a
        loader may declare it after building the model."""
        return bool(getattr(self.text_encoder.config, "use_attention_mask", False))

    def encoder_mask(self, tokens: TokenBatch) -> torch.Tensor:
        """The cross-attention mask the UNet gets (all ones when the model uses none)."""
        if self.settings.encoder_mask:
            return tokens.attention_mask.to(self.device)
        return torch.ones_like(tokens.attention_mask, device=self.device)

    # ---- image side --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N,H,W) or (N,H,W,3) -> pixels in [-1, 1], (N, C, S, S) at the model's size."""
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.shape[1] != self.image_channels:
            x = x.mean(1, keepdim=True).expand(-1, self.image_channels, -1, -1)
        if self.settings.pad:
            x = F.pad(x, (self.settings.pad,) * 4, value=-1.0)  # black, as the sources' background
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", align_corners=False)
        return x.clamp(-1.0, 1.0).contiguous()

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> what the UNet denoises. The VAE's mean, not a sample: the references
        are encoded once, and a fixed target keeps every method's loss on the same data."""
        if self.vae is None:
            return pixels
        scale = self.vae.config.scaling_factor
        return self.vae.encode(pixels.to(self.device)).latent_dist.mode() * scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents.clamp(-1.0, 1.0)
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1.0, 1.0)

    def to_uint8(self, pixels: torch.Tensor) -> np.ndarray:
        """Pixels in [-1, 1] -> uint8 at the native size: (N,H,W) grey or (N,H,W,3)."""
        p = self.settings.pad
        if p:
            pixels = pixels[..., p:-p, p:-p]
        x = ((pixels.float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()

    # ---- denoising -----------------------------------------------------------------------
    def noise_scheduler(self):
        """The training schedule (DDPM's forward process), from the folder's config."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def denoise(self, latents, timesteps, states, mask) -> torch.Tensor:
        mask = mask if self.settings.encoder_mask else None
        return self.unet(latents, timesteps, encoder_hidden_states=states,
                         encoder_attention_mask=mask).sample

    def training_target(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        return noise

    @torch.no_grad()
    def sample(
        self,
        states: torch.Tensor,
        mask: torch.Tensor,
        *,
        null_states: torch.Tensor,
        null_mask: torch.Tensor,
        seeds: list[int],
        steps: int,
        guidance: float,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Pixels (N, C, S, S) in [-1, 1] for the N conditionings, by DDIM (eta 0) with
        classifier-free guidance against ``null_states`` (the empty prompt's, (1, L, W)).

        Each image starts from its own seed's noise, so a sample is the same whatever the
        batch it is drawn in, and two methods given the same seeds start from the same noise.
        """
        from diffusers import DDIMScheduler

        device = self.device
        noise = torch.stack([
            torch.randn(self.latent_channels, self.latent_size, self.latent_size,
                        generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ])
        out = []
        for start in range(0, len(seeds), batch_size):
            scheduler = DDIMScheduler.from_config(self.scheduler_config)
            scheduler.set_timesteps(steps)
            x = noise[start : start + batch_size].to(device) * scheduler.init_noise_sigma
            cond = states[start : start + batch_size].to(device)
            cmask = mask[start : start + batch_size].to(device)
            n = len(x)
            both_states = torch.cat([null_states.to(device).expand(n, -1, -1), cond])
            both_mask = torch.cat([null_mask.to(device).expand(n, -1), cmask])
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
                uncond, cond_out = self.denoise(model_in, t.to(device), both_states, both_mask).chunk(2)
                guided = uncond + guidance * (cond_out - uncond)
                x = scheduler.step(guided, t, x, eta=0.0).prev_sample
            out.append(self.decode_latents(x).float().cpu())
        return torch.cat(out)


def check_pipeline_folder(folder: Path) -> Path:
    """The folder, or a one-line error naming what is missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"diffusers pipeline folder not found: {folder}")
    missing = [p for p in REQUIRED_PARTS if not (folder / p).is_dir()]
    if missing:
        raise ConfigError(
            f"{folder} is not a Stable-Diffusion-style pipeline folder: missing "
            f"{', '.join(p + '/' for p in missing)} (needs tokenizer/, text_encoder/, unet/, "
            "scheduler/, optional vae/)"
        )
    return folder


def load_pipeline_folder(folder: Path, *, content_id: str) -> TextToImageModel:
    """A local Stable-Diffusion-style pipeline folder, from local files only."""
    from tunebench.models.towers import quiet_transformers

    quiet_transformers()
    folder = check_pipeline_folder(folder)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        text_encoder = AutoModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        # low_cpu_mem_usage=False: without the optional accelerate package diffusers would
        # only warn and fall back to this anyway.
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True,
                                                    low_cpu_mem_usage=False)
        vae = None
        if (folder / "vae").is_dir():
            vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, low_cpu_mem_usage=False)
        config_path = folder / "scheduler" / "scheduler_config.json"
        scheduler_config = json.loads(config_path.read_text())
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"cannot load the pipeline in {folder}: {type(exc).__name__}: {first}") from exc
    for part in (text_encoder, unet, vae):
        if part is not None:
            part.eval().requires_grad_(False)
    return TextToImageModel(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae,
        scheduler_config=scheduler_config, settings=T2ISettings.read(folder), content_id=content_id,
    )


def folder_fingerprint(folder: Path) -> str:
    """Changes when any file of the folder changes (sizes, times, names): cheap for GBs."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


def save_pipeline_folder(model: TextToImageModel, folder: Path) -> None:
    """Write ``model`` in the layout ``load_pipeline_folder`` reads."""
    from diffusers import DDPMScheduler

    model.tokenizer.save_pretrained(folder / "tokenizer")
    model.text_encoder.save_pretrained(folder / "text_encoder")
    model.unet.save_pretrained(folder / "unet")
    if model.vae is not None:
        model.vae.save_pretrained(folder / "vae")
    DDPMScheduler.from_config(model.scheduler_config).save_pretrained(folder / "scheduler")
    model.settings.write(folder)
