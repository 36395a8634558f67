"""Pre-training tasks on linked corpora (ICT, BFS, WLP, MLM, mixes), their data stream and the pre-training stage."""
