"""Random augmentation as Keras preprocessing layers, in front of the classifier while training.

The layers are active only in training (``fit``); at inference they pass images through unchanged.
The saved model is the classifier itself, without them. Augmented images differ every epoch, so
the cached features and frozen-prefix activations cannot be used for the training data while
augmentation is on: the stages train on full images then, and log that the cache is bypassed.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from warmstart.config.params import AugmentParams
from warmstart.data.records import Manifest, image_dataset
from warmstart.layout import TEST, TRAIN, VALIDATION

logger = logging.getLogger(__name__)


def augmentation_layers(augment: AugmentParams, seed: int) -> list[keras.layers.Layer]:
    """RandomFlip / RandomRotation / RandomZoom for the non-zero settings, seeded."""
    layers = []
    if augment.flip != "none":
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed, name="augment_flip"))
    if augment.rotation > 0:
        layers.append(keras.layers.RandomRotation(augment.rotation, seed=seed + 1,
                                                  name="augment_rotation"))
    if augment.zoom > 0:
        layers.append(keras.layers.RandomZoom(augment.zoom, seed=seed + 2, name="augment_zoom"))
    return layers


def with_augmentation(model: keras.Model, augment: AugmentParams, seed: int) -> keras.Model:
    """A training model: augmentation layers, then ``model`` (whose layers it shares)."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    images = inputs
    for layer in augmentation_layers(augment, seed):
        images = layer(images)
    return keras.Model(inputs, model(images), name="augmented_training")


def describe(augment: AugmentParams) -> str:
    return f"flip={augment.flip} rotation={augment.rotation} zoom={augment.zoom}"


def augmented_training(model: keras.Model, augment: AugmentParams, manifest: Manifest,
                       batch_size: int, seed: int, stage: str
                       ) -> tuple[keras.Model, dict[str, tf.data.Dataset]]:
    """(training model, ``{split: data}`` for train, validation and test) on full images: the
    caches are bypassed. Only train is augmented (and shuffled)."""
    logger.warning("%s: augmentation is on (%s): the cached frozen-base outputs are BYPASSED; "
                   "every epoch runs the base on augmented images (much slower)", stage,
                   describe(augment))
    training = with_augmentation(model, augment, seed)
    data = {split: image_dataset(manifest, split, batch_size) for split in (VALIDATION, TEST)}
    return training, {TRAIN: image_dataset(manifest, TRAIN, batch_size, shuffle_seed=seed), **data}
