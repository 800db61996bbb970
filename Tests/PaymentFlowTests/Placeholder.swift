import Testing

@Suite struct PlaceholderFlow { @Test func nothingYet() { #expect(1 + 1 == 2) } }
