"""CaptionPusher: TFX's Pusher with atomic, warmed-up versions and the TFLite variant."""
