import Testing

@Suite struct PlaceholderE2E { @Test func nothingYet() { #expect(1 + 1 == 2) } }
