"""ImageFeatureExtractor: InceptionV3 image features for every ExampleGen example."""
