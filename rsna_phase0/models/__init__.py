"""The Phase-0 model: sparse (MinkowskiEngine) and WaveFormer encoder stages, SparK densify + decoder, losses."""
