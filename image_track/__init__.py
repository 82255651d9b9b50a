"""image_track: the paper's classifier experiments (ResNet-18 / CIFAR-10; digits on CPU) through llm_unlearn's
stages contract, ``METHODS`` and metrics. Imports ``llm_unlearn``; ``llm_unlearn`` never imports it: ``llm-unlearn
run`` finds it through the ``llm_unlearn.tracks`` entry point ``image = "image_track.track:TRACK"``.

Modules: ``models`` (cnn, resnet18, mlp, linear in plain torch.nn), ``data`` (digits, CIFAR through ``datasets``),
``attacks`` (gaussian, badnets, witches_brew, gradient_canceling), ``poisoning`` and ``task`` (what the shared
stages ask of the image task) and ``track`` (the experiment config and the stage builders).
"""
