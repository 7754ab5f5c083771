"""The shared core every stage uses: typed config, storage (local paths and object-storage
URIs), de-identification, the Ray session, the preprocessed dataset's reader, timing and fault
injection. Nothing here imports TensorFlow or another stage of the project."""
