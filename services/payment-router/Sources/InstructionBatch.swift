import Logging
import Postgres
import WiPayBus

/// Instructions as batches (docs/payment-flow.md, "Batches"): what `GroupCommitQueue` hands over at once is
/// handled on one connection in three trips and one ledger call, whatever its size:
///
/// 1. the lookups, pipelined and read-only;
/// 2. `BEGIN`, the new device signatures and the attempt rows, `COMMIT` (each attempt is durable before the
///    ledger sees its transfer), then `BEGIN` and one `SELECT … FOR UPDATE` of every request in id order;
/// 3. after one `transfer.post.batch`, the outcomes, outbox and trace rows, and `COMMIT`.
///
/// Then every caller is answered. The queue never puts two instructions for one request, or one device's
/// key twice, in a batch (and this code checks again). An instruction the batch cannot take (a statement of
/// the batch failed, the connection went, a duplicate) goes on its own afterwards (`submitInstruction`),
/// which is safe to repeat: the lookup finds the committed answer, the attempt insert is idempotent, and the
/// ledger answers `exists` for a transfer it holds. So an invalid instruction fails alone, never its batch.
extension PaymentRouter {
    /// The instructions of one batch, one reply each, in order.
    func submitInstructions(_ submits: [InstructionSubmit]) async -> [BusReply] {
        let (replies, alone) = await handleBatch(
            submits, type: .instructionSubmit, check: { try Self.check($0) },
            batch: { try await instructionBatch($0, lease: $1) }, alone: { try await submitInstruction($0) })
        if alone > 0 { metrics.instructionsAlone.increment(by: alone) }
        return replies
    }

    /// The batch's three trips on `lease`. Returns the answers it decided; an instruction it leaves out goes
    /// on its own. A failure inside a trip rolls back what that trip began.
    private func instructionBatch(
        _ checked: [(index: Int, item: CheckedInstruction)], lease: RouterDatabase.Lease
    ) async throws -> [(Int, BusReply)] {
        // 1. The lookups, read-only (a failed one sends the whole batch alone: nothing was written yet).
        let now = unixMillis()
        let lookups = checked.map { PGStatement(Self.instructionBatchLookupSQL, $0.item.batchLookupParameters) }
        let found = try await lease.pipeline(lookups)
        var lookedUp: [PGRows] = []
        for result in found {
            guard case .success(let rows) = result, rows.count == 1 else { return [] }
            lookedUp.append(rows)
        }
        var answered: [(Int, BusReply)] = []
        var proceeding: [(index: Int, context: InstructionContext, request: RequestRow)] = []
        /// Instructions whose device signature is new: remembered in the attempts' commit.
        var newSignatures: [(index: Int, item: CheckedInstruction)] = []
        var requests: Set<String> = []
        var transfers: Set<String> = []
        for ((index, item), rows) in zip(checked, lookedUp) {
            let columns = rows.rows[0]
            do {
                let verdict = try await evaluate(item, columns: columns, nowMillis: now) { digest in
                    try await rereadSignature(digest) { try await lease.query($0, $1) }
                }
                if !item.submit.signatureDigest.isEmpty, columns.count >= 4, columns[columns.count - 4] == "1" {
                    newSignatures.append((index, item))
                }
                switch verdict {
                case .answer(let reply):
                    answered.append((index, reply))
                case .proceed(let context, let request):
                    // A second instruction for the same request (or key) waits for this batch: it goes alone.
                    guard requests.insert(request.id).inserted, transfers.insert(context.transferId).inserted else {
                        newSignatures.removeAll { $0.index == index }
                        continue
                    }
                    proceeding.append((index, context, request))
                }
            } catch {
                answered.append((index, errorReply(error, type: .instructionSubmit)))
            }
        }
        guard !proceeding.isEmpty || !newSignatures.isEmpty else { return answered }

        // 2. One commit remembers the new signatures and writes the attempts; then the requests are locked, in
        //    id order (no deadlock between batches).
        let signatures = newSignatures.map { Self.signatureStatement($0.item, nowMillis: now) }
        let attempts = proceeding.map { Self.attemptStatement($0.context, requestId: $0.request.id, nowMillis: now) }
        let lock = PGStatement(
            "SELECT \(RequestRow.columns) FROM \(RequestRow.from) WHERE r.id = ANY($1::text[]) ORDER BY r.id FOR UPDATE OF r",
            [PGArray.text(proceeding.map(\.request.id))])
        let statements = [.begin] + signatures + attempts + [.commit] + (proceeding.isEmpty ? [] : [.begin, lock])
        let second = try await lease.pipeline(statements)
        guard second.allSatisfy({ if case .success = $0 { true } else { false } }) else {
            await lease.rollbackIfNeeded()
            return answered.filter { answer in !newSignatures.contains { $0.index == answer.0 } }
        }
        // A signature another instruction remembered first (a replay racing its original): refused, and its
        // attempt was not written.
        var replayed: Set<Int> = []
        for (position, signature) in newSignatures.enumerated() {
            guard case .success(let rows) = second[1 + position], rows.count == 1 else { continue }
            let item = signature.item
            if rows.string(0, 0) != item.submit.deviceId || rows.string(0, 1) != item.key || rows.string(0, 2) != item.submit.bodyHash {
                replayed.insert(signature.index)
                logger.warning(
                    "device signature replayed with another request",
                    metadata: ["device.id": "\(item.submit.deviceId)", "request.id": "\(item.claimedRequestId)"])
                metrics.outcome("signature_replayed")
            }
        }
        if !replayed.isEmpty {
            let refusal = RouterError(RouterError.unauthorized, "signature_replayed", "this signature was already used for another request")
            answered.removeAll { replayed.contains($0.0) }
            answered.append(contentsOf: replayed.map { ($0, refusal.reply) })
            proceeding.removeAll { replayed.contains($0.index) }
        }
        guard !proceeding.isEmpty, case .success(let lockedRows)? = second.last else {
            await lease.rollbackIfNeeded()
            return answered
        }
        do {
            var locked: [String: RequestRow] = [:]
            for row in lockedRows.rows {
                let request = try RequestRow(row: row)
                locked[request.id] = request
            }
            // 3. Decide; one ledger call for every transfer; the outcomes and their outbox rows in one commit.
            let at = unixMillis()
            var settled: [Int: SettledInstruction] = [:]
            var posts: [(position: Int, post: TransferPost, recorded: Bool)] = []
            for (position, item) in proceeding.enumerated() {
                guard let row = locked[item.request.id] else {
                    answered.append((item.index, RouterError.corrupt("request vanished").reply))
                    continue
                }
                switch plan(item.context, row: row, atMillis: at) {
                case .decided(let decided): settled[position] = decided
                case .post(let post, let recorded): posts.append((position, post, recorded))
                }
            }
            if !posts.isEmpty {
                let answers = await postBatchToLedger(posts.map(\.post), correlation: proceeding[posts[0].position].request.id)
                for (post, answer) in zip(posts, answers) {
                    let item = proceeding[post.position]
                    guard let row = locked[item.request.id] else { continue }
                    do {
                        settled[post.position] = try await settle(
                            item.context, row: row, answer: answer, recorded: post.recorded, lease: lease, atMillis: at)
                    } catch let error as RouterError {
                        // Nothing written for it (no decision about the request): answered now.
                        answered.append((item.index, error.reply))
                    }
                }
            }
            let order = settled.keys.sorted()
            var writes: [PGStatement] = []
            for position in order {
                guard let decided = settled[position], !decided.writes.isEmpty else { continue }
                let (sql, parameters) = decided.writes.statement(nowMillis: at)
                writes.append(PGStatement(sql, parameters))
            }
            let statements = writes + [.commit]
            let written = try await lease.pipeline(statements)
            guard written.allSatisfy({ if case .success = $0 { true } else { false } }) else {
                // Nothing of this trip committed: the settled instructions go alone (their transfers are
                // posted: the ledger answers `exists`).
                await lease.rollbackIfNeeded()
                logger.warning("instruction batch outcomes did not commit; they go one by one", metadata: ["count": "\(order.count)"])
                return answered
            }
            for position in order {
                guard let decided = settled[position] else { continue }
                let item = proceeding[position]
                finished(decided, requestId: item.request.id, deviceId: item.context.submit.deviceId)
                answered.append((item.index, Self.reply(decided.stored)))
            }
            return answered
        } catch {
            await lease.rollbackIfNeeded()
            throw error
        }
    }
}
