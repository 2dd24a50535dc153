"""The offline side's speed: search at scale, encoding, slides, Ray (`make benchmark`)."""
