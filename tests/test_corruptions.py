import numpy as np
import pytest
from matplotlib import colors

from lth_jax.metrics import corruptions as cor

SEVERITIES = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)


def _distortion(name, x, seed=0):
  return [float(np.mean(np.abs(cor.corrupt(name, x, s, seed) - x))) for s in SEVERITIES]


def test_names_and_registry():
  assert set(cor.NAMES) == set(cor.REGISTRY) == set(cor.PARAMS)
  assert len(cor.NAMES) == 10
  assert all(len(cor.PARAMS[n]) == 5 for n in cor.NAMES)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", cor.NAMES)
def test_shape_dtype_range_determinism(name, channels, images):
  x = images[..., :channels]
  for s in SEVERITIES:
    y = cor.corrupt(name, x, s, seed=7)
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_array_equal(y, cor.corrupt(name, x, s, seed=7))


@pytest.mark.parametrize("name", cor.NOISE_NAMES)
def test_seeds_differ_for_noise(name, images):
  assert not np.array_equal(cor.corrupt(name, images, 3, seed=0), cor.corrupt(name, images, 3, seed=1))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", [n for n in cor.NAMES if n != "saturate"])
def test_distortion_non_decreasing_in_severity(name, channels, images):
  d = _distortion(name, images[..., :channels])
  assert d[0] > 0
  assert all(b >= a for a, b in zip(d, d[1:])), d


def test_saturate_two_regimes(images):
  # Not monotone under mean |corrupted - clean|: severities 1, 2 desaturate (S * .3, S * .1),
  # 3..5 oversaturate (S * 1.5, S * 2 + .1, S * 2.5 + .2). What holds: mean saturation falls
  # from clean to 1 to 2, rises from clean to 3 to 4 to 5, and distortion grows within each regime.
  def mean_s(x):
    return float(colors.rgb_to_hsv(x)[..., 1].mean())
  sat = [mean_s(cor.corrupt("saturate", images, s)) for s in SEVERITIES]
  clean = mean_s(images)
  assert sat[1] < sat[0] < clean < sat[2] < sat[3] < sat[4]
  d = _distortion("saturate", images)
  assert d[0] < d[1] and d[2] < d[3] < d[4]


def test_grayscale_photometric():
  x = np.random.default_rng(1).random((2, 8, 8, 1)).astype(np.float32)
  np.testing.assert_array_equal(cor.corrupt("saturate", x, 5), x)
  np.testing.assert_allclose(cor.corrupt("brightness", x, 5), np.clip(x + 0.3, 0, 1), atol=1e-6)


def test_grey_rgb_brightness_matches_grayscale():
  g = np.random.default_rng(2).random((2, 8, 8, 1)).astype(np.float32)
  rgb = np.repeat(g, 3, axis=-1)
  for s in SEVERITIES:
    np.testing.assert_allclose(cor.corrupt("brightness", rgb, s), np.repeat(cor.corrupt("brightness", g, s), 3, -1),
                               atol=1e-6)


def test_contrast_keeps_channel_means(images):
  for s in SEVERITIES:
    y = cor.corrupt("contrast", images, s)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=1e-6)


def test_gaussian_blur_matches_scipy(images):
  ndimage = pytest.importorskip("scipy.ndimage")
  x = images.astype(np.float64)
  for sigma in cor.PARAMS["gaussian_blur"]:
    expected = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
    np.testing.assert_allclose(cor.gaussian_blur(x, sigma), expected, atol=1e-12)


def test_gaussian_blur_keeps_constant():
  x = np.full((1, 6, 6, 3), 0.4)
  np.testing.assert_allclose(cor.gaussian_blur(x, 1.0), x, atol=1e-12)


def test_pixelate_integer_factor_is_block_mean():
  x = np.random.default_rng(3).random((2, 4, 4, 1))
  blocks = x.reshape(2, 2, 2, 2, 2, 1).mean(axis=(2, 4))  # (N, 2, 2, C) 2x2 block means
  expected = np.repeat(np.repeat(blocks, 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(cor.pixelate(x, 0.5), expected, atol=1e-12)


def test_box_weights_rows_sum_to_one():
  for n_in, n_out in [(32, 27), (27, 32), (32, 20)]:
    np.testing.assert_allclose(cor.box_weights(n_in, n_out).sum(axis=1), 1.0)
  # Upsampling is nearest-neighbour: one weight of 1 per row.
  assert set(np.unique(cor.box_weights(20, 32))) == {0.0, 1.0}


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelate_matches_pil_box(channels):
  # The reference: PIL resize down then up with BOX on uint8 images. PIL rounds to uint8 after
  # each 1-D pass, so agreement is to within one grey level.
  image_mod = pytest.importorskip("PIL.Image")
  x = np.random.default_rng(4).integers(0, 256, size=(3, 32, 32, channels), dtype=np.uint8)
  for c in cor.PARAMS["pixelate"]:
    n = int(32 * c)
    expected = np.stack([
        np.asarray(image_mod.fromarray(im.squeeze(-1) if channels == 1 else im)
                   .resize((n, n), image_mod.BOX).resize((32, 32), image_mod.BOX)).reshape(im.shape)
        for im in x]) / 255.0
    np.testing.assert_allclose(cor.pixelate(x / 255.0, c), expected, atol=1.01 / 255)


def test_impulse_amount(images):
  # Severity 5 flips about 7% of elements to exactly 0 or 1, about half each.
  x = np.full((8, 16, 16, 3), 0.5, dtype=np.float32)
  y = cor.corrupt("impulse_noise", x, 5, seed=0)
  flipped = y != 0.5
  assert abs(flipped.mean() - 0.07) < 0.015
  assert abs((y == 1.0).sum() / flipped.sum() - 0.5) < 0.1


def test_errors_name_allowed_values(images):
  with pytest.raises(ValueError, match="gaussian_noise"):
    cor.corrupt("fog", images, 1)
  for bad in (0, 6, 2.0):
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 4, 5\)"):
      cor.corrupt("contrast", images, bad)
  with pytest.raises(ValueError):
    cor.corrupt("contrast", images[0], 1)
  with pytest.raises(ValueError):
    cor.corrupt("contrast", images * 255, 1)
