"""The names of everything a run writes into its output folder, in one table."""

DEFAULT_OUTPUT_DIR = "saved_models"

SOURCE_MODEL = "source_model.h5"
TARGET_MODEL = "target_model.h5"
SAVED_MODEL_DIR = "target_savedmodel"
FUSED_MODEL = "fused_model.h5"
FUSED_SAVED_MODEL_DIR = "fused_savedmodel"
# The metrics file of each stage, in pipeline order (report.md lists the stages so).
METRICS = {
  "pretrain": "source_metrics.json",
  "transfer": "transfer_metrics.json",
  "finetune": "finetune_metrics.json",
  "export": "export_metrics.json",
  "fuse": "fuse_metrics.json",
}
PRETRAIN_CURVES = "pretrain_curves.png"
FINETUNE_CURVES = "finetune_curves.png"
TRANSFER_CONFUSION = "transfer_confusion.png"
CONFUSION = "confusion_matrix.png"
FUSE_CONFUSION = "fuse_confusion.png"
MISCLASSIFIED = "misclassified.png"
PREDICTIONS = "predictions.csv"
REPORT = "report.md"
# TFLite files of tl-export (and finetune's --export_formats), by format, and their class names
# (one per line, as TFLite's label files).
TFLITE_FILES = {
  "tflite": "model.tflite",
  "tflite_dynamic": "model_dynamic.tflite",
  "tflite_float16": "model_float16.tflite",
  "tflite_int8": "model_int8.tflite",
}
TFLITE_LABELS = "labels.txt"
LOGS_DIR = "logs"  # TensorBoard's, one folder per stage

# Training-state backups while a stage trains, one folder per stage, and the settings beside them.
BACKUP_DIR = ".tl_keras_backup"
BACKUP_SETTINGS = "settings.json"

# Inside model files: the .h5 attribute and the SavedModel assets holding tl_keras's metadata.
METADATA_ATTR = "tl_keras_metadata"
CLASS_NAMES_ASSET = "class_names.txt"
METADATA_ASSET = "tl_keras_metadata.json"
