"""The tutorial's recipe, done the way the tutorial does it (Keras 2 via ``tf_keras``).

``ImageDataGenerator(rescale=1/255)`` + ``flow_from_directory`` (PIL decode + resize of every
image, every epoch, in Python), MobileNetV2 without top + GlobalAveragePooling2D + Dense(1,
sigmoid), RMSprop; the whole network runs forward on every image every epoch, validation every
epoch. Then fine-tuning: the same model, base unfrozen from ``fine_tune_at``, recompiled with a
lower learning rate, trained more epochs. Run by ``bench/tutorial_vs_warmstart.py`` in its own
process (so its wall time and peak RSS are measured alone); writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tf_keras as keras  # noqa: E402  (Keras 2, as in the tutorial)
from tf_keras.preprocessing.image import ImageDataGenerator  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="folder holding train/, validation/ and optionally test/")
    parser.add_argument("--weights", required=True, help="MobileNetV2 no-top .h5 weights")
    parser.add_argument("--json", required=True, help="where to write the summary")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--fine-tune-at", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--fine-tune-learning-rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=1337)
    return parser.parse_args()


def generators(args: argparse.Namespace):
    datagen = ImageDataGenerator(rescale=1.0 / 255)
    size = (args.image_size, args.image_size)
    train = datagen.flow_from_directory(os.path.join(args.data, "train"), target_size=size,
                                        batch_size=args.batch_size, class_mode="binary",
                                        seed=args.seed)
    validation = datagen.flow_from_directory(os.path.join(args.data, "validation"),
                                             target_size=size, batch_size=args.batch_size,
                                             class_mode="binary", shuffle=False)
    return train, validation


def test_generator(args: argparse.Namespace):
    """The held-out test/ folder, when the data has one (warmstart's ingested splits do)."""
    folder = os.path.join(args.data, "test")
    if not os.path.isdir(folder):
        return None
    return ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        folder, target_size=(args.image_size, args.image_size), batch_size=args.batch_size,
        class_mode="binary", shuffle=False)


def test_accuracy(model, test) -> float | None:
    return None if test is None else float(model.evaluate(test, verbose=0)[1])


def main() -> None:
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    train, validation = generators(args)
    test = test_generator(args)
    base = keras.applications.MobileNetV2(
        input_shape=(args.image_size, args.image_size, 3), include_top=False, alpha=args.alpha,
        weights=args.weights)
    base.trainable = False
    model = keras.Sequential([base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=args.learning_rate),
                  loss="binary_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    first = model.fit(train, epochs=args.epochs, validation_data=validation, verbose=2)
    transfer_s = time.perf_counter() - start
    transfer_test = test_accuracy(model, test)

    base.trainable = True
    for layer in base.layers[:args.fine_tune_at]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=args.fine_tune_learning_rate),
                  loss="binary_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    second = model.fit(train, epochs=args.epochs + args.fine_tune_epochs,
                       initial_epoch=args.epochs, validation_data=validation, verbose=2)
    finetune_s = time.perf_counter() - start
    summary = {
        "transfer_seconds": transfer_s, "finetune_seconds": finetune_s,
        "transfer_val_accuracy": first.history["val_accuracy"][-1],
        "finetune_val_accuracy": second.history["val_accuracy"][-1],
        "transfer_test_accuracy": transfer_test,
        "finetune_test_accuracy": test_accuracy(model, test),
        "train_images": train.samples, "validation_images": validation.samples,
        "settings": vars(args),
    }
    with open(args.json, "w") as handle:
        json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
