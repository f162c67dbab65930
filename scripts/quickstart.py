"""The README quickstart as a script: fit a detector on real data (Fashion-MNIST) and use it.

Run with `python scripts/quickstart.py` (a few minutes on 2 CPU cores).
"""

import numpy as np

from distilldetect import (
    ModelDistillation,
    load_detector,
    predict_batch,
    save_detector,
    scale_by_instance,
)
from distilldetect.corruptions import corrupt
from distilldetect.datasets import load_fashion_mnist
from distilldetect.models import build_model, train_classifier

(x_train, y_train), (x_test, y_test) = load_fashion_mnist()


def prep(images):
    return scale_by_instance(images.astype("float32") / 255)


X_train, X_test = prep(x_train[:20000]), prep(x_test)  # 20 000 training images: quick

# the classifier to protect (any torch / tf.keras model or predict_proba-like callable)
teacher = build_model("cnn_classifier", input_shape=(28, 28), seed=0)
train_classifier(teacher, X_train, y_train[:20000], epochs=3, seed=0)

# a much smaller student learns to copy the teacher on unlabelled data
student = build_model("distilled_model_cifar10", input_shape=(28, 28), nb_filters1=32, seed=0)
ad = ModelDistillation(distilled_model=student, model=teacher)
ad.fit(X_train, epochs=3, seed=0)
ad.infer_threshold(X_test[:5000], threshold_perc=95)

# harmful drift costs the teacher accuracy (fog, here), harmless drift does not (brightness):
# scores rise where the teacher changes its mind and the student does not follow
cd = ad.drift_detector(X_test[:1000], p_val=0.05)  # one-sided KS test on batches of scores
for name in ["none", "fog", "brightness"]:
    images = x_test[5000:6000]
    x = prep(images if name == "none" else corrupt(images, name, severity=5, seed=0))
    accuracy = (predict_batch(x, teacher).argmax(1) == y_test[5000:6000]).mean()
    flagged = ad.predict(x)["data"]["is_adversarial"].mean()  # instances above the threshold
    drift = np.mean([cd.predict(batch)["data"]["is_drift"] for batch in np.split(x, 10)])
    print(
        f"{name:10s} teacher accuracy {accuracy:.2f}, {flagged:4.0%} of images flagged, "
        f"drift in {drift:4.0%} of batches of 100"
    )

# save without pickle (JSON + safetensors, checksummed, atomic); load anywhere
save_detector(ad, "fmnist_detector")
ad2 = load_detector("fmnist_detector")
assert np.array_equal(ad2.score(X_test[:100]), ad.score(X_test[:100]))
