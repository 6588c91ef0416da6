"""Pictures: what the model sees and does, and how a training run went.

- :mod:`~retinaface_tf.vis.writer`      the one atomic writer of every PNG and figure
- :mod:`~retinaface_tf.vis.draw`        drawing on images (OpenCV): detections, heat maps, anchors
- :mod:`~retinaface_tf.vis.history`     a training run's history (``plot-run``)
- :mod:`~retinaface_tf.vis.pr_curves`   WIDER FACE PR curves (``evaluate``)
- :mod:`~retinaface_tf.vis.explain`     saliency / Grad-CAM++ of one face's score (tf-keras-vis)
- :mod:`~retinaface_tf.vis.anchor_view` the anchors matched to each face of a training image

matplotlib and tf-keras-vis are imported only where a figure or a map is made.
"""
