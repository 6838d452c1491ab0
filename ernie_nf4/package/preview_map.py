"""The live previews' map: one linear map (and a bias) from a packed, normalized latent vector (the transformer's
``[128]`` channels at one position) to the RGB values of the 2x2 pixels that stand for its 16x16-pixel patch, so a
preview of a ``W x H`` run is ``W/8 x H/8`` pixels, made by one small matrix product and no VAE call.

It is fitted once, by least squares, on latents that the package's own VAE encodes from a fixed set of synthetic
images built here (gradients, coloured shapes, smooth and fine noise: the same pixels on every machine) against
what the same VAE decodes those latents to, 8x smaller (so a preview shows what the run's final decode would), and
stored in the package as ``preview_map.safetensors`` (``weight`` ``[12, 128]``, ``bias`` ``[12]``, float32).
Reading it checks it as data: the two tensors, their shapes, every value finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import PackageError
from .safetensors_header import REPAIR_HINT, read_safetensors_header

PREVIEW_FILE = "preview_map.safetensors"
LATENT_CHANNELS = 128  # 32 VAE channels x a 2x2 patch
OUTPUTS = 12  # RGB of 2x2 pixels, ordered (channel, row, column)
FIT_SIZE = 256  # the synthetic images' side, in pixels
FIT_IMAGES = 16
BN_EPS = 1e-5  # as the pipeline's decode
_RIDGE = 1e-4  # keeps the fit steady where the synthetic images leave a latent direction unused


@dataclass(frozen=True)
class PreviewMap:
    """``weight`` ``[12, 128]`` and ``bias`` ``[12]`` (float32 torch tensors): latent vector -> 2x2 RGB in [0, 1]."""

    weight: object
    bias: object

    def to(self, device) -> PreviewMap:
        return PreviewMap(self.weight.to(device), self.bias.to(device))

    def rgb(self, latents):
        """Packed latents ``[1, 128, h, w]`` (any device and float dtype) -> RGB ``[3, 2h, 2w]`` float in [0, 1]."""
        import torch

        x = latents[0].float()
        _, h, w = x.shape
        out = torch.einsum("oc,chw->ohw", self.weight.to(x.device), x) + self.bias.to(x.device).view(-1, 1, 1)
        out = out.view(3, 2, 2, h, w).permute(0, 3, 1, 4, 2).reshape(3, 2 * h, 2 * w)
        return out.clamp(0.0, 1.0)

    def image(self, latents):
        """A PIL image (``2w x 2h``) of packed latents ``[1, 128, h, w]``."""
        from PIL import Image

        pixels = (self.rgb(latents) * 255).round().to(dtype=_uint8()).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(pixels, "RGB")


def _uint8():
    import torch

    return torch.uint8


def write_preview_map(folder: Path, preview: PreviewMap) -> Path:
    """``preview`` as ``folder/preview_map.safetensors``."""
    from safetensors.torch import save_file

    path = Path(folder) / PREVIEW_FILE
    tensors = {"weight": preview.weight.float().contiguous().cpu(), "bias": preview.bias.float().contiguous().cpu()}
    save_file(tensors, str(path), metadata={"maps": "packed normalized latents -> 2x2 RGB in [0, 1]"})
    return path


def read_preview_map(folder: Path) -> PreviewMap | None:
    """The package's preview map, or None when it has none; ``PackageError`` naming the file when it is not one
    (not safetensors, other tensors or shapes, a value that is not finite)."""
    import torch
    from safetensors.torch import load_file

    path = Path(folder) / PREVIEW_FILE
    if not path.is_file():
        return None
    _, header = read_safetensors_header(path)
    expected = {"weight": [OUTPUTS, LATENT_CHANNELS], "bias": [OUTPUTS]}
    found = {name: entry.get("shape") for name, entry in header.items() if name != "__metadata__"}
    if found != expected or any(header[name].get("dtype") != "F32" for name in expected):
        raise PackageError(
            f"{path}: must hold float32 tensors {expected} (a preview map), found {found}; delete the file (it is "
            f"fitted again at the first run that asks for previews) or {REPAIR_HINT}"
        )
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors' own parser is stricter than the header check (offsets, metadata)
        raise PackageError(
            f"{path}: is not a readable safetensors file ({type(err).__name__}: {str(err)[:200]}); delete the file "
            f"(it is fitted again at the first run that asks for previews) or {REPAIR_HINT}"
        ) from None
    if not all(torch.isfinite(tensors[name]).all() for name in expected):
        raise PackageError(f"{path}: holds NaN or infinite values; delete the file or {REPAIR_HINT}")
    return PreviewMap(tensors["weight"], tensors["bias"])


def synthetic_images(count: int = FIT_IMAGES, size: int = FIT_SIZE, seed: int = 0):
    """``count`` deterministic RGB images ``[count, 3, size, size]`` in [0, 1] (a float32 tensor): gradients,
    coloured shapes on coloured grounds, smooth noise and fine noise, in turn."""
    import torch

    gen = torch.Generator("cpu").manual_seed(seed)
    axis = torch.linspace(0.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    images = []
    for index in range(count):
        a, b = torch.rand(3, 1, 1, generator=gen), torch.rand(3, 1, 1, generator=gen)
        kind = index % 4
        if kind == 0:  # a linear gradient between two colours, at an angle
            angle = torch.rand(1, generator=gen) * 6.2832
            ramp = ((xx * angle.cos() + yy * angle.sin()) - (angle.cos().clamp(max=0) + angle.sin().clamp(max=0))).abs()
            image = a + (b - a) * (ramp / ramp.max())
        elif kind == 1:  # coloured discs and boxes
            image = a.expand(3, size, size).clone()
            for _ in range(4):
                cx, cy, r = torch.rand(3, generator=gen)
                colour = torch.rand(3, 1, generator=gen)
                inside = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.1 + 0.3 * r) ** 2) | (
                    ((xx - cy).abs() < 0.2 * r) & ((yy - cx).abs() < 0.15)
                )
                image[:, inside] = colour
        elif kind == 2:  # smooth noise
            coarse = torch.rand(1, 3, 6, 6, generator=gen)
            image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
        else:  # fine noise around a colour
            image = a + 0.35 * (torch.rand(3, size, size, generator=gen) - 0.5)
        images.append(image.clamp(0.0, 1.0))
    return torch.stack(images)


def _batches(tensor, size: int = 4):
    return [tensor[i : i + size] for i in range(0, len(tensor), size)]


def _bn(vae, like):
    """The VAE's batch-norm mean and standard deviation, shaped to scale packed latents like ``like``."""
    import torch

    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, torch.float32)
    return mean, (vae.bn.running_var.view(1, -1, 1, 1).to(like.device, torch.float32) + BN_EPS).sqrt()


def encode_packed(vae, pixels):
    """Pixels ``[N, 3, H, W]`` in [0, 1] -> the transformer's packed, normalized latents ``[N, 128, H/16, W/16]``
    (float32, on the VAE's device): what image-to-image encodes, through ``vae`` at its distribution's mode."""
    import torch

    device = next(vae.parameters()).device
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode((batch * 2 - 1).to(device, vae.dtype)).latent_dist.mode().float() for batch in _batches(pixels)]
        )
    n, c, h, w = latents.shape  # the pipeline's 2x2 patchify
    packed = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)
    mean, std = _bn(vae, packed)
    return (packed - mean) / std


def decode_packed(vae, packed):
    """Packed, normalized latents ``[N, 128, h, w]`` -> pixels ``[N, 3, 16h, 16w]`` in [0, 1] (float32, on the
    CPU): what the run's final decode gives, through ``vae``."""
    import torch

    mean, std = _bn(vae, packed)
    latents = packed * std + mean
    n, c, h, w = latents.shape  # the pipeline's 2x2 unpatchify
    latents = latents.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, h * 2, w * 2)
    with torch.no_grad():
        images = [vae.decode(batch.to(vae.dtype), return_dict=False)[0].float().cpu() for batch in _batches(latents)]
    return ((torch.cat(images) + 1) / 2).clamp(0.0, 1.0)


def preview_targets(pixels):
    """Pixels ``[N, 3, H, W]`` -> what a preview shows, ``[N, 3, H/8, W/8]``: each 8x8 block's mean colour."""
    import torch

    return torch.nn.functional.avg_pool2d(pixels.float(), 8)


def fit_preview_map(vae, count: int = FIT_IMAGES, size: int | None = None) -> PreviewMap:
    """The least-squares ``PreviewMap`` of ``vae`` (any ``AutoencoderKLFlux2``, on any device): the latents it
    encodes from ``synthetic_images(count, size)`` against what it decodes them to, 8x smaller; a preview then
    shows what the final decode of a run's latents would. ``size``: 256 pixels on a GPU, 128 on a CPU. The result
    lives on the CPU. Seconds on a GPU, about ten on a CPU for a tiny VAE."""
    import torch

    if size is None:
        size = FIT_SIZE if next(vae.parameters()).device.type == "cuda" else FIT_SIZE // 2
    latents = encode_packed(vae, synthetic_images(count, size))
    targets = preview_targets(decode_packed(vae, latents)).double()  # [N, 3, 2h, 2w]
    latents = latents.cpu().double()
    n, _, h, w = latents.shape
    x = latents.permute(0, 2, 3, 1).reshape(-1, LATENT_CHANNELS)
    y = targets.view(n, 3, h, 2, w, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, OUTPUTS)  # (channel, row, column)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gram = x.T @ x + _RIDGE * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    solution = torch.linalg.solve(gram, x.T @ y)  # [129, 12]
    return PreviewMap(solution[:-1].T.float().contiguous(), solution[-1].float().contiguous())
