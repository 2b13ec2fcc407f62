"""Object detection and instance segmentation on sparse backbones: torchvision Faster / Mask R-CNN
through an FPN (`models`), COCO-format data and COCO AP (`coco`), MACs as executed (`cost`)."""
