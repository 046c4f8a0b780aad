"""Flickr8kExampleGen: ingests the Flickr8k layout as tf.Example splits."""
