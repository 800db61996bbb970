public enum PlaceholderPG {}
