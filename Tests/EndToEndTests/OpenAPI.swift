// The OpenAPI conformance check: every response the end-to-end tests observed must have a status that
// docs/openapi.yaml documents for its path and method, and a JSON response must hold the required fields
// of the documented schema (top level; `allOf` merged, `$ref` followed, one of `oneOf`/`anyOf`).

import Foundation
import Yams

enum E2EOpenAPI {
    /// The repository's docs/openapi.yaml, found from this source file's place.
    static var specPath: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/openapi.yaml").path
    }

    struct Spec: @unchecked Sendable {
        // Plain YAML values (dictionaries, arrays, strings) as Yams loads them; read only.
        let root: [String: Any]
        let paths: [(template: [String], operations: [String: Any])]
    }

    /// Loads and indexes the spec, or says why it cannot.
    static func load() -> Result<Spec, E2EFailure> {
        guard let text = try? String(contentsOfFile: specPath, encoding: .utf8) else {
            return .failure(E2EFailure("docs/openapi.yaml is missing"))
        }
        let loaded: Any?
        do { loaded = try Yams.load(yaml: text) } catch { return .failure(E2EFailure("docs/openapi.yaml is not YAML: \(error)")) }
        guard let root = loaded as? [String: Any], let paths = root["paths"] as? [String: Any] else {
            return .failure(E2EFailure("docs/openapi.yaml has no paths"))
        }
        var indexed: [(template: [String], operations: [String: Any])] = []
        for (path, value) in paths {
            guard let operations = value as? [String: Any] else { continue }
            indexed.append((path.split(separator: "/").map(String.init), operations))
        }
        return .success(Spec(root: root, paths: indexed))
    }

    /// The problems with `observations` (empty when all conform).
    static func check(_ observations: [E2EObservation]) -> [String] {
        let spec: Spec
        switch load() {
        case .success(let loaded): spec = loaded
        case .failure(let error): return observations.isEmpty ? [] : [error.description]
        }
        var problems: [String] = []
        var seen = Set<String>()
        for o in observations {
            let problem = check(o, spec)
            if let problem, seen.insert(problem).inserted { problems.append(problem) }
        }
        return problems
    }

    static func check(_ o: E2EObservation, _ spec: Spec) -> String? {
        let path = String(o.path.prefix { $0 != "?" })
        let segments = path.split(separator: "/").map(String.init)
        // The most specific template: fewest parameters.
        let matches = spec.paths.filter { match($0.template, segments) }
            .sorted { $0.template.filter { $0.hasPrefix("{") }.count < $1.template.filter { $0.hasPrefix("{") }.count }
        guard let entry = matches.first else { return "\(o.method) \(path): path not documented" }
        let template = "/" + entry.template.joined(separator: "/")
        guard let operation = entry.operations[o.method.lowercased()] as? [String: Any] else {
            return "\(o.method) \(template): method not documented"
        }
        guard let responses = operation["responses"] as? [String: Any] else {
            return "\(o.method) \(template): no responses documented"
        }
        let status = String(o.status)
        let family = "\(o.status / 100)XX"
        guard let responseValue = responses[status] ?? responses[family] ?? responses[family.lowercased()] ?? responses["default"]
        else {
            return "\(o.method) \(template): status \(o.status) not documented (documented: \(responses.keys.sorted().joined(separator: ", ")))"
        }
        guard let response = resolve(responseValue, spec) as? [String: Any] else { return nil }
        guard let content = response["content"] as? [String: Any] else { return nil }
        let isJSON = o.contentType?.lowercased().contains("json") ?? false
        guard isJSON, let media = content.first(where: { $0.key.lowercased().contains("json") })?.value as? [String: Any],
            let schemaValue = media["schema"]
        else { return nil }
        guard let body = try? JSONSerialization.jsonObject(with: Data(o.body), options: [.fragmentsAllowed]) else {
            return "\(o.method) \(template) \(o.status): body is not JSON"
        }
        if let missing = missingRequired(schemaValue, body, spec), !missing.isEmpty {
            return "\(o.method) \(template) \(o.status): missing required field(s) \(missing.sorted().joined(separator: ", "))"
        }
        return nil
    }

    static func match(_ template: [String], _ segments: [String]) -> Bool {
        guard template.count == segments.count else { return false }
        for (t, s) in zip(template, segments) where !(t.hasPrefix("{") && t.hasSuffix("}") && !s.isEmpty) && t != s {
            return false
        }
        return true
    }

    /// Follows `$ref: '#/a/b/c'` within the document (bounded).
    static func resolve(_ value: Any, _ spec: Spec) -> Any? {
        var current: Any? = value
        for _ in 0..<16 {
            guard let object = current as? [String: Any], let ref = object["$ref"] as? String else { return current }
            guard ref.hasPrefix("#/") else { return nil }
            var node: Any? = spec.root
            for part in ref.dropFirst(2).split(separator: "/") {
                let key = part.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
                node = (node as? [String: Any])?[key]
            }
            current = node
        }
        return nil
    }

    /// Required fields of the schema that `body` lacks; nil when the schema says nothing checkable.
    static func missingRequired(_ schemaValue: Any, _ body: Any, _ spec: Spec, depth: Int = 0) -> Set<String>? {
        guard depth < 8, let schema = resolve(schemaValue, spec) as? [String: Any] else { return nil }
        var missing = Set<String>()
        let object = body as? [String: Any]
        if let required = schema["required"] as? [String] {
            guard let object else { return Set(required) }
            for field in required where object[field] == nil { missing.insert(field) }
        }
        if let all = schema["allOf"] as? [Any] {
            for part in all { missing.formUnion(missingRequired(part, body, spec, depth: depth + 1) ?? []) }
        }
        for key in ["oneOf", "anyOf"] {
            if let options = schema[key] as? [Any], !options.isEmpty {
                let results = options.map { missingRequired($0, body, spec, depth: depth + 1) ?? [] }
                if !results.contains(where: \.isEmpty), let fewest = results.min(by: { $0.count < $1.count }) {
                    missing.formUnion(fewest)
                }
            }
        }
        return missing
    }
}
