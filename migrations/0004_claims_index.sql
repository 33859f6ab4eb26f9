-- A replay releases its claims after every batch; without an index that is a scan of the
-- whole queue each time.
CREATE INDEX dead_letters_by_claim ON dead_letters (claimed_by) WHERE claimed_by IS NOT NULL;
