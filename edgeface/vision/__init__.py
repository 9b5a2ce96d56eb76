"""Faces in an image: detection (BlazeFace, tiling, scene cuts), box maths, keypoint refinement,
alignment, the quality gate, the embedder and the analyzer that chains them."""
