"""CIFAR-10-C style corruptions (Hendrycks & Dietterich, 2019) in numpy, for robustness evaluation.

`corrupt(name, x, severity, seed)` takes a batch of images `x` as floats in [0, 1] with shape
(N, H, W, C), C = 1 or 3, and returns a float32 array of the same shape clipped to [0, 1].
Severity is 1..5; the per-severity constants are those of `make_cifar_c.py` in
hendrycks/robustness (the CIFAR variant, not ImageNet-C's). Noise is drawn from
`np.random.default_rng(seed)` for the whole batch at once, so the output is a deterministic
function of (x, severity, seed); an image's noise depends on its position in the batch.

How this relates to the reference, which works on one uint8 PIL image at a time:
  * Outputs stay float; the reference rounds every corrupted image to uint8. JPEG alone goes
    through uint8, because the codec needs it (x is rounded to round(255 x) before encoding).
  * gaussian_blur: separable Gaussian filter, kernel truncated at 4 sigma (as skimage/scipy), with
    the border padded by repeating the edge pixel (scipy.ndimage's 'nearest': a a a | a b c d), as
    the reference's call of skimage's `gaussian` does by default.
  * pixelate: PIL's BOX resampling (down to int(H * c) x int(W * c), then back up) rebuilt in
    numpy from Pillow's coefficients: each output pixel is the plain mean of the input pixels
    whose centres fall in its footprint, not an overlap-weighted area average (for factors near
    1, as here, BOX is close to subsampling). It matches PIL to within uint8 rounding; PIL rounds
    to uint8 after each of its two 1-D passes, we do not round.
  * brightness / saturate convert RGB <-> HSV with matplotlib (skimage in the reference; the same
    formulas). For C = 1 there is no hue or saturation: brightness adds c to the grey value
    (what the HSV route gives for grey pixels) and saturate is the identity. Note that for RGB,
    grey pixels (S = 0, hue 0 = red) get a red tint at severities 4 and 5, where S becomes
    0 * a + b > 0; the reference does the same.
  * impulse_noise: salt-and-pepper per array element (channels independently), amount c,
    salt:pepper = 1:1, as skimage's `random_noise(mode='s&p')`.

Severity is not monotone in distortion for `saturate`: severities 1 and 2 desaturate (S * 0.3,
S * 0.1) and 3..5 oversaturate (S * 1.5, S * 2 + 0.1, S * 2.5 + 0.2).
"""

import io
from typing import Callable

import numpy as np

from lth_jax.errors import require

# Per-severity constants from make_cifar_c.py (hendrycks/robustness, CIFAR version).
PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "saturate": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}

SEVERITIES = (1, 2, 3, 4, 5)


# --- noise --------------------------------------------------------------------------------------
# Each corruption is fn(x, c, rng) -> array on float64 x in [0, 1]; `corrupt` clips and casts.


def gaussian_noise(x, c, rng):
  """x plus Gaussian noise of standard deviation c."""
  return x + rng.normal(scale=c, size=x.shape)


def shot_noise(x, c, rng):
  """Poisson noise: photon counts of mean x * c, divided back by c."""
  # Poisson photon counts with c photons at full intensity.
  return rng.poisson(x * c) / c


def impulse_noise(x, c, rng):
  """Salt-and-pepper noise: a fraction c of the elements set to 0 or 1, alike."""
  flipped = rng.random(x.shape) < c
  salted = rng.random(x.shape) < 0.5
  out = x.copy()
  out[flipped & salted] = 1.0
  out[flipped & ~salted] = 0.0
  return out


def speckle_noise(x, c, rng):
  """Multiplicative noise: x plus x times Gaussian noise of standard deviation c."""
  return x + x * rng.normal(scale=c, size=x.shape)


# --- blur and resampling ------------------------------------------------------------------------


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian taps, radius int(truncate * sigma + 0.5) as scipy/skimage."""
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return k / k.sum()


def _filter_axis(x, kernel, axis):
  radius = len(kernel) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  xp = np.pad(x, pad, mode="edge")  # numpy 'edge' is scipy.ndimage 'nearest', skimage's default.
  n = x.shape[axis]
  out = np.zeros_like(x)
  for i, w in enumerate(kernel):
    out += w * np.take(xp, np.arange(i, i + n), axis=axis)
  return out


def gaussian_blur(x, c, rng=None):
  """Blur over H and W (axes 1, 2) with a Gaussian of sigma c pixels."""
  k = gaussian_kernel(c)
  return _filter_axis(_filter_axis(x, k, 1), k, 2)


def box_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) resampling matrix of PIL's BOX filter (Pillow's Resample.c, precompute_coeffs).

  Output pixel o has footprint [o, o + 1) * n_in / n_out in input coordinates (widened to one input
  pixel when upsampling); it averages, with equal weights, the input pixels whose centres fall in
  the footprint (right end included). Downsampling is thus a box average; upsampling is
  nearest-neighbour.
  """
  scale = n_in / n_out
  filterscale = max(scale, 1.0)
  support = 0.5 * filterscale
  weights = np.zeros((n_out, n_in))
  for o in range(n_out):
    center = (o + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)  # The same window and float steps as PIL's C code.
    hi = min(int(center + support + 0.5), n_in)
    arg = (np.arange(lo, hi) - center + 0.5) * (1.0 / filterscale)
    w = ((arg > -0.5) & (arg <= 0.5)).astype(np.float64)
    weights[o, lo:hi] = w / w.sum() if w.sum() > 0 else w
  return weights


def resize_box(x, height: int, width: int):
  """Resize images (N, H, W, C) to (N, height, width, C) with PIL's BOX filter, in float."""
  x = np.einsum("ph,nhwc->npwc", box_weights(x.shape[1], height), x)
  return np.einsum("qw,npwc->npqc", box_weights(x.shape[2], width), x)


def pixelate(x, c, rng=None):
  """Box-downsample to int(H * c) x int(W * c), then box-upsample back, as the reference."""
  _, h, w, _ = x.shape
  return resize_box(resize_box(x, max(int(h * c), 1), max(int(w * c), 1)), h, w)


# --- photometric --------------------------------------------------------------------------------


def contrast(x, c, rng=None):
  """Each image and channel's deviations from its mean scaled by c."""
  means = x.mean(axis=(1, 2), keepdims=True)  # Per image and channel, as the reference.
  return (x - means) * c + means


def _on_hsv(x, channel, fn):
  """Apply fn to one HSV channel of RGB images (the V channel directly for grayscale)."""
  from matplotlib import colors  # A dependency of the package; imported late to keep import cheap.
  hsv = colors.rgb_to_hsv(np.clip(x, 0.0, 1.0))
  hsv[..., channel] = np.clip(fn(hsv[..., channel]), 0.0, 1.0)
  return colors.hsv_to_rgb(hsv)


def brightness(x, c, rng=None):
  """c added to the HSV value (to the grey value for one channel)."""
  if x.shape[-1] == 1:
    return x + c  # For grey pixels V is the grey value.
  return _on_hsv(x, 2, lambda v: v + c)


def saturate(x, c, rng=None):
  """The HSV saturation S made S * a + b for c = (a, b); one channel stays as it is."""
  if x.shape[-1] == 1:
    return x  # No saturation to change in a single channel.
  a, b = c
  return _on_hsv(x, 1, lambda s: s * a + b)


def jpeg_compression(x, c, rng=None):
  """Each image through JPEG at quality c, by Pillow."""
  from PIL import Image  # Pillow comes with matplotlib; only JPEG needs it.
  images = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
  out = np.empty(x.shape, dtype=np.float64)
  for i, image in enumerate(images):
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)  # 'L' or 'RGB' from shape.
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(c))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float64) / 255.0
    out[i] = decoded.reshape(image.shape)
  return out


# --- registry -----------------------------------------------------------------------------------

REGISTRY: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "pixelate": pixelate,
    "contrast": contrast,
    "brightness": brightness,
    "saturate": saturate,
    "jpeg_compression": jpeg_compression,
}

NAMES = tuple(REGISTRY)
NOISE_NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def corrupt(name: str, x, severity: int, seed: int = 0) -> np.ndarray:
  """Corruption `name` at `severity` (1..5) of images x in [0, 1], shape (N, H, W, C), C in {1, 3}.

  Returns float32, same shape, clipped to [0, 1]; deterministic in `seed` (used by the noises).
  """
  if name not in REGISTRY:
    raise ValueError(f"name={name!r} is not a corruption; allowed: {', '.join(NAMES)}")
  if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
    raise ValueError(f"severity={severity!r} must be one of {SEVERITIES}")
  x = np.asarray(x, dtype=np.float64)
  require(x.ndim == 4 and x.shape[-1] in (1, 3),
        f"images must have shape (N, H, W, C) with C in (1, 3), got {x.shape}")
  if x.size == 0:
    return x.astype(np.float32)
  # A little tolerance for round-off from upstream normalisation; then clip it away.
  require(x.min() >= -1e-6 and x.max() <= 1 + 1e-6,
        f"images must be floats in [0, 1], got range [{x.min()}, {x.max()}]")
  x = np.clip(x, 0.0, 1.0)
  out = REGISTRY[name](x, PARAMS[name][severity - 1], np.random.default_rng(seed))
  return np.clip(out, 0.0, 1.0).astype(np.float32)
