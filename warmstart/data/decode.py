"""The one image decode + resize used by preprocessing, validation and prediction (no skew)."""

from __future__ import annotations

import re

import tensorflow as tf

#: Formats ``tf.io.decode_image`` can decode; anything else cannot be trained on.
TF_DECODABLE_FORMATS = ("jpeg", "png", "gif", "bmp")


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP bytes to an RGB uint8 tensor (grey and alpha are converted)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def resize_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize to ``size``x``size`` (bilinear, antialiased) and round back to uint8 pixels."""
    resized = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def load_image(path: tf.Tensor, size: int) -> tf.Tensor:
    """Read, decode and resize one image file: the exact input the models are trained on."""
    return resize_uint8(decode_rgb(tf.io.read_file(path)), size)


def decoder_message(exc: tf.errors.OpError) -> str:
    """The decoder's own words (first line), without TF's op-name decorations."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", exc.message or "")
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S).strip()
    return text.splitlines()[0] if text else type(exc).__name__
